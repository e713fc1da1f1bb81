"""EMA of the parameters, one update per step (the default, ema_every = 1): hand-computed values,
and a float64 trainer run against the closed form of the average over its parameter history.

Every sample and FID uses EMA parameters; test_cifar_recipe covers the ema_every = k > 1 branch.
"""
import jax
import jax.numpy as jnp
import numpy as np

import input_pipeline
from mf_jax import sharding as sharding_lib
from mf_jax import train_state as ts
from mf_jax import train_step as step_lib
import numerics
from test_train import float64_sharding_config


def test_per_step_update_by_hand(x64):
  """ema <- d ema + (1 - d) p for each decay, leaf by leaf (numbers worked out by hand)."""
  ema = ({"a": jnp.array([1.0, -2.0]), "b": jnp.array(4.0)},) * 2
  params = {"a": jnp.array([3.0, 2.0]), "b": jnp.array(0.0)}
  new = ts.update_ema(ema, params, (0.9, 0.75))
  # d = 0.9:  0.9 * 1 + 0.1 * 3 = 1.2;  0.9 * -2 + 0.1 * 2 = -1.6;  0.9 * 4 + 0.1 * 0 = 3.6.
  np.testing.assert_allclose(new[0]["a"], [1.2, -1.6], rtol=1e-15)
  np.testing.assert_allclose(new[0]["b"], 3.6, rtol=1e-15)
  # d = 0.75: 0.75 * 1 + 0.25 * 3 = 1.5;  0.75 * -2 + 0.25 * 2 = -1.0;  0.75 * 4 = 3.0.
  np.testing.assert_allclose(new[1]["a"], [1.5, -1.0], rtol=1e-15)
  np.testing.assert_allclose(new[1]["b"], 3.0, rtol=1e-15)
  # A second step from there, with p = 0: the average only decays, by d per step.
  again = ts.update_ema(new, jax.tree_util.tree_map(jnp.zeros_like, params), (0.9, 0.75))
  np.testing.assert_allclose(again[0]["a"], [1.08, -1.44], rtol=1e-15)
  np.testing.assert_allclose(again[1]["b"], 2.25, rtol=1e-15)


def test_trainer_ema_is_the_closed_form_average(x64):
  """After n float64 train steps, EMA_n = d^n p_0 + (1 - d) sum_k d^(n - k) p_k over the parameters
  p_k after step k (p_0: initialisation, where the EMA starts), for two decays at once.

  Compared as the change from p_0 (what the steps added), to 1e-10 relative: float64 rounding of a
  few additions; swapped weights or a missed step change it by O(1).
  """
  config = float64_sharding_config()
  decays = (0.9, 0.6)
  config.ema_decays = decays
  mesh = sharding_lib.make_mesh(1, jax.devices()[:1])
  model, opt = ts.build_model(config), ts.make_optimizer(config)
  state, shardings = ts.create_sharded_state(config, model, opt, mesh, jax.random.key(0))
  step = step_lib.jit_train_step(step_lib.make_train_step(config, model, opt, mesh=mesh), mesh,
                                 shardings)
  history = [numerics.flat(jax.device_get(state.params))]
  batches = input_pipeline.train_iterator(config, 0)
  for _ in range(3):
    batch = {k: v.astype(np.float64) if v.dtype == np.float32 else v
             for k, v in next(batches).items()}
    state, _ = step(state, sharding_lib.global_batch(batch, mesh))
    history.append(numerics.flat(jax.device_get(state.params)))
  assert int(state.step) == 3
  p0, n = history[0], len(history) - 1
  assert np.linalg.norm(history[-1] - p0) > 1e-6 * np.linalg.norm(p0)  # The parameters moved.
  for d, ema in zip(decays, state.ema_params):
    want = d ** n * p0 + sum((1 - d) * d ** (n - k) * history[k] for k in range(1, n + 1))
    got = numerics.flat(jax.device_get(ema))
    assert numerics.rel_err(got - p0, want - p0) < 1e-10, (d, numerics.rel_err(got - p0, want - p0))
