"""The drifting method inside the trainer: queues filled, a step on 8 devices equals one device,
exact resume through checkpoints, and one-step sampling."""
import jax
import numpy as np

from configs import drifting_digits
from mf_jax import class_queues
from mf_jax import sharding as sharding_lib
from mf_jax import train
from test_train import run_steps


def tiny_drifting():
  config = drifting_digits.get_config()
  config.model.mlp_widths = (64, 64)
  config.drifting.update(classes_per_step=4, num_pos=8, num_neg=8, queue_len=16,
                         temperatures=(0.05, 0.2))
  config.train.update(global_batch_size=32, num_steps=3, log_every=1, checkpoint_every=100,
                      sample_every=0)
  config.eval.every_steps = 0
  config.sample.update(num_samples=16, batch_size=16)
  return config


def test_drifting_step_sharded_matches_single_device():
  config = tiny_drifting()
  ref, ref_losses = run_steps(config, sharding_lib.make_mesh(1, jax.devices()[:1]), 2)
  got, losses = run_steps(config, sharding_lib.make_mesh(1), 2)
  assert bool(class_queues.ready(got.aux["queues"], config.drifting.num_pos))
  assert np.all(np.isfinite(losses))
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(jax.device_get((got.params, got.aux))),
                  jax.tree_util.tree_leaves(jax.device_get((ref.params, ref.aux)))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_drifting_resume_and_sample(tmp_path):
  config = tiny_drifting()
  train.train_and_evaluate(config, str(tmp_path / "a"))
  config.train.num_steps = 5
  resumed = train.train_and_evaluate(config, str(tmp_path / "a"))
  straight = train.train_and_evaluate(config, str(tmp_path / "b"))
  for a, b in zip(jax.tree_util.tree_leaves(jax.device_get((resumed.params, resumed.aux))),
                  jax.tree_util.tree_leaves(jax.device_get((straight.params, straight.aux)))):
    np.testing.assert_array_equal(a, b)
  batch = np.load(train.sample_to_files(config, str(tmp_path / "a")))
  assert batch["arr_0"].shape == (16, 8, 8, 1) and batch["arr_0"].dtype == np.uint8


def test_mae_pretraining_then_drifting_on_its_features(tmp_path):
  mae = tiny_drifting()
  mae.method = "mae"
  mae.mae.update(widths=(8, 16), blocks_per_stage=1, groups=4, decoder_width=8)
  mae.train.num_steps = 4
  first = train.train_and_evaluate(mae, str(tmp_path / "mae"))
  assert int(first.step) == 4

  config = tiny_drifting()
  config.mae = mae.mae
  config.train.num_steps = 2
  config.drifting.feature_encoder_workdir = str(tmp_path / "mae")
  state = train.train_and_evaluate(config, str(tmp_path / "drift"))
  rows = [l for l in open(tmp_path / "drift" / "metrics.jsonl") if '"loss"' in l]
  assert rows and "stage1/loc" in rows[-1] and "raw" in rows[-1]  # Encoder features were used.
  # The encoder stays frozen at the MAE's EMA parameters.
  for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(state.aux["encoder"])),
                  jax.tree_util.tree_leaves(jax.device_get(first.ema_params[0]))):
    np.testing.assert_array_equal(a, b)
