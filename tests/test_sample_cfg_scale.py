"""--config.sample.cfg_scale in --mode=sample, for a MeanFlow and a Drifting config: the override
parses (the field is declared with its default 1.0), and it reaches the sampler (the samples differ
from the default's, which equal an explicit 1.0)."""
import os
import sys

import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from mf_jax import config_checks, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_meanflow(config):
  config.model.update(name="mlp", mlp_widths=(64, 64))  # Compiles in seconds, unlike the DiT.
  config.train.num_steps = 2
  return config


def _tiny_drifting(config):
  config.model.mlp_widths = (64, 64)
  config.drifting.update(classes_per_step=4, num_pos=8, num_neg=8, queue_len=16,
                         temperatures=(0.05, 0.2))
  config.train.update(global_batch_size=32, num_steps=2, log_every=1, checkpoint_every=100,
                      sample_every=0)
  config.eval.every_steps = 0
  config.sample.update(num_samples=16, batch_size=16)
  return config


def _cli_config(name, shrink, *overrides):
  """The config main.py would get from --config=configs/NAME.py and the overrides (then shrunk)."""
  argv = ["main.py", f"--config={os.path.join(ROOT, 'configs', name)}", *overrides]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, lock_config=True)
  saved, sys.argv = sys.argv, argv  # ml_collections reads the overrides from sys.argv.
  try:
    flag_values(argv)
  finally:
    sys.argv = saved
  return shrink(flag_values.config)


def _sample(name, shrink, workdir, *overrides):
  """--mode=sample as main.py runs it (validate, then train.sample_to_files): the uint8 images."""
  config = _cli_config(name, shrink, *overrides)
  config_checks.validate(config, workdir, "sample", hand_over=True)
  return np.load(train.sample_to_files(config, workdir))["arr_0"]


@pytest.mark.parametrize("name, shrink", [("tiny.py", _tiny_meanflow),
                                          ("drifting_digits.py", _tiny_drifting)])
def test_sample_cfg_scale_override_changes_the_samples(tmp_path, name, shrink):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(_cli_config(name, shrink), workdir)
  default = _sample(name, shrink, workdir)
  one = _sample(name, shrink, workdir, "--config.sample.cfg_scale=1")
  two = _sample(name, shrink, workdir, "--config.sample.cfg_scale=2")
  np.testing.assert_array_equal(default, one)  # Sampling is deterministic; 1.0 is the default.
  assert np.mean(np.abs(two.astype(int) - one.astype(int))) > 0.5  # Guided: other images.


def test_sample_cfg_scale_needs_labels():
  config = _cli_config("cifar10_unet.py", lambda c: c, "--config.sample.cfg_scale=2")
  with pytest.raises(config_checks.ConfigError, match=r"sample\.cfg_scale=2\.0 needs a "
                                                     r"class-conditional model"):
    config_checks.validate_static(config)
