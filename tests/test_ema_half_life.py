"""EMA copies defined by EDM half-lives (ema_half_lives_kimg, mf_jax/ema.py): the decay per step
against its closed form through the ramp and in steady state, a float64 trainer run against the
closed-form weighted average of the parameter history, and choosing a copy by name or index.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import input_pipeline
import numerics
from configs import tiny
from eval import evaluators
from mf_jax import ema as ema_lib
from mf_jax import sharding as sharding_lib
from mf_jax import train_state as ts
from mf_jax import train_step as step_lib
from mf_jax.errors import ConfigError
from test_train import float64_sharding_config


def closed_form(step, kimg, batch, ratio):
  """The half-life in images is step * batch * ratio during the ramp, K * 1000 after it: the
  weight of the past halves every step * ratio steps, then every K * 1000 / batch steps."""
  if step * batch * ratio < kimg * 1000:
    return 0.5 ** (1.0 / (step * ratio))  # The batch cancels during the ramp.
  return 0.5 ** (batch / (kimg * 1000))


@pytest.mark.parametrize("kimg", [500, 1000, 2000])
def test_decay_per_step_is_the_closed_form(kimg, x64):
  """pMF's three EMAs at batch 1024, ratio 0.05: the ramp ends at step K * 1000 / 51.2 (9765.6,
  19531.25, 39062.5); checked at its first steps, on both sides of its end, and long after, as
  the step the trainer passes (a traced int32), in float64 to 1e-12."""
  batch, ratio = 1024, 0.05
  end = kimg * 1000 / (batch * ratio)
  steps = [1, 2, 3, 100, math.floor(end), math.ceil(end), 10 * math.ceil(end), 400_320]
  decay = jax.jit(lambda s: ema_lib.half_life_decay(s, kimg, batch, ratio))
  for step in steps:
    got = float(decay(jnp.int32(step)))
    want = closed_form(step, kimg, batch, ratio)
    assert abs(got - want) <= 1e-12 * want, (step, got, want)
  # Steady state: the weight of an update halves after K * 1000 images (K * 1000 / batch steps).
  steady = float(decay(jnp.int32(400_320)))
  assert steady == pytest.approx(0.5 ** (1024 / (kimg * 1000)), rel=1e-14)
  assert steady ** (kimg * 1000 / batch) == pytest.approx(0.5, rel=1e-12)
  # pMF's steady values (0.9985814, 0.9992905, 0.9996452 to 7 decimals).
  assert steady == pytest.approx({500: 0.9985814, 1000: 0.9992905, 2000: 0.9996452}[kimg],
                                 abs=6e-8)
  # Step 0 (no update applied yet) would copy the parameters: beta = 0.
  assert float(decay(jnp.int32(0))) == 0.0


def test_decays_follow_the_run_batch_and_the_listed_order():
  """decays_at: one decay per half-life, in order, with train.global_batch_size (float32 here,
  as in training: the exponent's relative rounding 6e-8 moves beta by ~1e-10)."""
  config = tiny.get_config()
  config.ema_decays, config.ema_half_lives_kimg = (), (2000, 0.5)
  config.train.global_batch_size = 256
  got = [float(d) for d in ema_lib.decays_at(config, jnp.int32(1_000_000))]
  assert got[0] == pytest.approx(0.5 ** (256 / 2e6), rel=1e-7)
  assert got[1] == pytest.approx(0.5 ** (256 / 500), rel=1e-6)
  config.ema_rampup_ratio = 0.5  # Ramp: 0.5 ** (1 / (step * ratio)) whatever the batch.
  assert float(ema_lib.decays_at(config, jnp.int32(3))[0]) == pytest.approx(0.5 ** (1 / 1.5),
                                                                             rel=1e-6)
  config.ema_half_lives_kimg = ()
  config.ema_decays = (0.9, 0.99)
  assert ema_lib.decays_at(config, jnp.int32(3)) == (0.9, 0.99)  # Constants: Python floats.


def test_trainer_half_life_ema_is_the_closed_form_average(x64):
  """After n float64 train steps, EMA_n = prod_k beta_k p_0 + sum_k (1 - beta_k) prod_{j>k}
  beta_j p_k, with beta_k the decay of update k (1-based) and p_k the parameters after it.

  Batch 16, ramp-up ratio 2 and half-lives of 48 and 80 images: decays 0.71 (ramp), 0.79, 0.79
  (steady from step 2) and 0.71, 0.84 (ramp), 0.87 (steady from step 3), so a step off by one or a
  wrong ratio changes the average by O(1); compared as the change from p_0 to 1e-10 relative."""
  config = float64_sharding_config()
  batch, ratio, kimgs = 16, 2.0, (0.048, 0.08)
  config.train.global_batch_size = batch
  config.ema_decays, config.ema_half_lives_kimg, config.ema_rampup_ratio = (), kimgs, ratio
  mesh = sharding_lib.make_mesh(1, jax.devices()[:1])
  model, opt = ts.build_model(config), ts.make_optimizer(config)
  state, shardings = ts.create_sharded_state(config, model, opt, mesh, jax.random.key(0))
  assert len(state.ema_params) == 2
  step = step_lib.jit_train_step(step_lib.make_train_step(config, model, opt, mesh=mesh), mesh,
                                 shardings)
  history = [numerics.flat(jax.device_get(state.params))]
  batches = input_pipeline.train_iterator(config, 0)
  for _ in range(3):
    b = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in next(batches).items()}
    state, _ = step(state, sharding_lib.global_batch(b, mesh))
    history.append(numerics.flat(jax.device_get(state.params)))
  p0, n = history[0], len(history) - 1
  assert np.linalg.norm(history[-1] - p0) > 1e-6 * np.linalg.norm(p0)  # The parameters moved.
  for kimg, ema in zip(kimgs, state.ema_params):
    betas = [None] + [closed_form(k, kimg, batch, ratio) for k in range(1, n + 1)]
    want = math.prod(betas[1:]) * p0 + sum(
        (1 - betas[k]) * math.prod(betas[k + 1:]) * history[k] for k in range(1, n + 1))
    got = numerics.flat(jax.device_get(ema))
    err = numerics.rel_err(got - p0, want - p0)
    assert err < 1e-10, (kimg, err)
  second = [closed_form(k, 0.08, batch, ratio) for k in (1, 2, 3)]
  assert second[0] < second[1] < second[2]  # Three different decays: the ramp is exercised.


def named_config(decays=(), half_lives=()):
  config = tiny.get_config()
  config.ema_decays, config.ema_half_lives_kimg = decays, half_lives
  return config


def test_names_and_selection_by_name_or_index_agree():
  assert ema_lib.ema_names(named_config(half_lives=(500, 1000.0, 2000))) == (
      "500kimg", "1000kimg", "2000kimg")
  assert ema_lib.ema_names(named_config(half_lives=(0.5,))) == ("0.5kimg",)
  assert ema_lib.ema_names(named_config(decays=(0.9999, 0.99995, 0.9996))) == (
      "0.9999", "0.99995", "0.9996")
  for config in (named_config(half_lives=(500, 1000, 2000)),
                 named_config(decays=(0.9999, 0.99995, 0.9996))):
    for section in ("sample", "eval"):
      for index, name in enumerate(ema_lib.ema_names(config)):
        config[section].update(ema_name="", ema_index=index)
        by_index = ema_lib.ema_index(config, section)
        config[section].update(ema_name=name, ema_index=0)  # The name wins over the index.
        assert ema_lib.ema_index(config, section) == by_index == index


def test_unknown_name_is_a_clear_error_in_sample_and_eval():
  config = named_config(half_lives=(500, 1000, 2000))
  config.sample.ema_name = "1500kimg"
  with pytest.raises(ConfigError, match=r"^sample\.ema_name='1500kimg': this run keeps no EMA copy "
                     r"of that name \(ema_half_lives_kimg=\(500, 1000, 2000\) names its copies "
                     r"\['500kimg', '1000kimg', '2000kimg'\]\)\. Fix: set --config\.sample\."
                     r"ema_name to one of \['500kimg', '1000kimg', '2000kimg'\], or to '' to use "
                     r"sample\.ema_index\.$"):
    ema_lib.ema_index(config, "sample")
  config.eval.ema_name = "0.9999"  # A decay's name, but this run keeps half-life copies.
  with pytest.raises(ValueError, match=r"eval\.ema_name='0\.9999': this run keeps no EMA copy"):
    evaluators.validate_config(config)
  config.eval.ema_name = "2000kimg"
  evaluators.validate_config(config)  # A kept name passes.
