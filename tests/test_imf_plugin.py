"""iMF through the trainer: the digits config trains a few steps and samples with guidance chosen at
sampling time (omega and the interval are the network's conditions, not a CFG combination)."""
import jax
import numpy as np
import pytest

from configs import imagenet_imf, imf_digits
from mf_jax import config_checks, generate, imf, sharding, train, train_state
from mf_jax.models import dit_incontext
from mf_jax.objectives import imf as imf_objective


def tiny_config():
  config = imf_digits.get_config()
  config.model.update(depth=2, hidden_size=32, num_heads=2, head_depth=1)
  config.train.update(global_batch_size=16, num_steps=2, log_every=1, checkpoint_every=2,
                      sample_every=0)
  config.sample.update(num_samples=16, batch_size=16)
  config.eval.every_steps = 0
  return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  config = tiny_config()
  state = train.train_and_evaluate(config, str(tmp_path_factory.mktemp("imf") / "run"))
  return config, state


def test_the_digits_config_trains_and_its_loss_has_both_heads(trained):
  config, state = trained
  assert int(state.step) == 2
  # The trained network has both heads (the v head only serves training).
  assert {"u_final", "v_final"} <= set(state.params["params"])


def test_sampling_takes_omega_and_the_interval_at_sampling_time(trained):
  config, state = trained
  mesh = sharding.make_mesh()
  model = train_state.build_model(config)
  sample_fn = generate.make_sampler(config, model, mesh)
  # The trained parameters moved by random amounts: the network's residual gates and output
  # layers start at zero, so two steps leave the conditions' effect below float32 resolution.
  leaves, tree = jax.tree_util.tree_flatten(state.params)
  keys = jax.random.split(jax.random.key(5), len(leaves))
  params = jax.tree_util.tree_unflatten(tree, [
      a + 0.1 * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys)])
  draw = lambda omega, interval=None: generate.draw(
      config, sample_fn, params, mesh, 16, 1, seed=3, cfg_scale=omega, interval=interval)[0]
  x1, x3 = draw(1.0), draw(3.0)
  assert np.all(np.isfinite(x1)) and np.abs(x1 - x3).max() > 1e-3  # omega is seen.
  # Another interval changes the samples too: it is a condition of the network.
  assert np.abs(draw(3.0, (0.2, 0.3)) - x3).max() > 1e-3
  # The same samples from mf_jax/imf.py's sampler on the network, outside the trainer.
  noise, labels = generate.sample_inputs(jax.random.fold_in(jax.random.key(3), 0), 0, 16,
                                         (8, 8, 1), 10)
  want = imf.sample(imf_objective.net_fn(model, params), noise, labels, 1, 3.0, 0.0, 1.0)
  np.testing.assert_allclose(x3, np.asarray(want), rtol=0, atol=1e-5)  # |x| <= ~5, eps32 * 64.


@pytest.mark.parametrize("variant,train_count", [("B/2", 145_596_960), ("M/2", 230_570_016),
                                                 ("L/2", 509_752_352), ("XL/2", 711_113_760)])
def test_the_imagenet_configs_build_the_released_sizes(variant, train_count):
  """Counts of the official training modules (Lyy-iiis/imeanflow at bf60cd7, under
  jax.eval_shape; tests/test_dit_incontext.py checks the modules themselves)."""
  config = imagenet_imf.get_config(variant)
  config.eval.every_steps = 0
  config_checks.validate_static(config)
  shapes = jax.eval_shape(lambda k: train_state.build_model(config).init(
      k, *train_state.example_inputs(config)), jax.random.key(0))
  assert sum(a.size for a in jax.tree_util.tree_leaves(shapes)) == train_count
  assert dit_incontext.parse_variant(variant)[3] == 2


def test_a_guidance_interval_is_refused_for_methods_without_one():
  from configs import tiny  # pylint: disable=import-outside-toplevel
  config = tiny.get_config()
  config.sample.guidance_interval = (0.4, 0.6)
  with pytest.raises(config_checks.ConfigError, match=r"sample\.guidance_interval=.*method='meanflow'"):
    config_checks.validate_static(config)
  config = tiny_config()
  config.sample.guidance_interval = (0.7, 0.6)
  with pytest.raises(config_checks.ConfigError, match=r"sample\.guidance_interval="):
    config_checks.validate_static(config)
