"""The Table 1 ablation knobs change what they claim: meanflow.jvp_tangent (1b) on fields with known
partial derivatives, meanflow.time_conditioning (1c) by the scalars the network receives."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cifar10_unet, drifting_toy, tiny
from configs.base import meanflow_config
from mf_jax import config_checks, meanflow
from mf_jax import train_state as ts
from mf_jax.objectives.meanflow import u_fn as meanflow_u_fn

MU, S = 1.5, 0.5  # Data x ~ N(MU, S^2): every field of the linear path is known in closed form.


def _m(t):
  return (1 - t) * MU


def _sigma(t):
  return jnp.sqrt((1 - t) ** 2 * S ** 2 + t ** 2)


def gaussian_v(z, t):
  """E[e - x | z_t = z], t [B, 1]."""
  return -MU + (t - (1 - t) * S ** 2) / _sigma(t) * (z - _m(t)) / _sigma(t)


def gaussian_u(z, r, t, labels=None):
  """(z_t - z_r) / (t - r) along the probability-flow trajectory through z at t; needs r < t."""
  r, t = r[:, None], t[:, None]
  z_r = _m(r) + _sigma(r) * (z - _m(t)) / _sigma(t)
  return (z - z_r) / (t - r)


def _times(n, rng, min_gap=0.05):
  a, b = 0.95 * rng.uniform(size=(2, n))
  r, t = np.minimum(a, b), np.maximum(a, b)
  return jnp.asarray(r), jnp.asarray(np.maximum(t, r + min_gap))  # Away from the 0/0 at r = t.


def test_tangents_on_a_field_with_known_partials(x64):
  """u = z (1 + r t) + r^2 + t^3: grad_z u = 1 + r t, d_r u = z t + 2 r, d_t u = z r + 3 t^2."""
  u_fn = lambda z, r, t, _: z * (1 + r * t)[:, None] + (r ** 2 + t ** 3)[:, None]
  z, v = jnp.array([[2.0], [-1.0], [0.5]]), jnp.array([[0.5], [3.0], [-2.0]])
  r, t = jnp.array([0.2, 0.1, 0.3]), jnp.array([0.7, 0.9, 0.6])
  col = lambda a: a[:, None]
  v_grad_z = v * col(1 + r * t)
  d_r, d_t = z * col(t) + col(2 * r), z * col(r) + col(3 * t ** 2)
  expected = {"v,0,1": v_grad_z + d_t, "v,0,0": v_grad_z, "v,1,0": v_grad_z + d_r,
              "v,1,1": v_grad_z + d_r + d_t}
  targets = {}
  for tangent, dudt in expected.items():
    u, targets[tangent] = meanflow.average_velocity_target(u_fn, z, r, t, v, None, tangent)
    np.testing.assert_allclose(targets[tangent], v - col(t - r) * dudt, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(u, u_fn(z, r, t, None), rtol=1e-15)
  default = meanflow.average_velocity_target(u_fn, z, r, t, v, None)[1]
  np.testing.assert_array_equal(default, targets["v,0,1"])
  for a in expected:  # Four different targets: no knob value is a silent no-op.
    for b in expected:
      assert a == b or np.abs(targets[a] - targets[b]).min() > 1e-3, (a, b)


def test_tangents_against_the_analytic_gaussian_flow(x64):
  """With the true u and v: (v,0,1) gives u itself (the MeanFlow identity), and since
  v . grad_z u = du/dt - d_t u, (v,0,0) gives u + (t - r) d_t u, (v,1,0) u + (t - r)(d_t u - d_r u),
  (v,1,1) u - (t - r) d_r u; d_r u and d_t u here come from central finite differences."""
  rng = np.random.default_rng(0)  # numpy draws: no jax.random programs to compile.
  r, t = _times(64, rng)
  z = jnp.asarray(2.0 * rng.normal(size=(64, 1)))
  v = gaussian_v(z, t[:, None])
  h = 1e-5
  d_r = (gaussian_u(z, r + h, t) - gaussian_u(z, r - h, t)) / (2 * h)
  d_t = (gaussian_u(z, r, t + h) - gaussian_u(z, r, t - h)) / (2 * h)
  u_true, gap = gaussian_u(z, r, t), (t - r)[:, None]
  expected = {"v,0,1": u_true, "v,0,0": u_true + gap * d_t, "v,1,0": u_true + gap * (d_t - d_r),
              "v,1,1": u_true - gap * d_r}
  targets = jax.jit(lambda z, r, t, v: {  # One compile instead of many eager ops.
      k: meanflow.average_velocity_target(gaussian_u, z, r, t, v, None, k)[1] for k in expected})(
          z, r, t, v)
  for tangent, want in expected.items():
    u_tgt = targets[tangent]
    # Finite-difference error ~ h^2 |u'''| + eps |u| / h, far below 1e-6 for gaps >= 0.05.
    np.testing.assert_allclose(u_tgt, want, atol=1e-6, err_msg=tangent)
    if tangent != "v,0,1":
      assert np.abs(u_tgt - u_true).max() > 0.05, tangent  # The ablation breaks the identity.


@pytest.mark.parametrize("tangent", ["v,0,1", "v,0,0"])
def test_loss_reads_jvp_tangent_from_the_config(x64, tangent):
  """meanflow_loss_from_draws follows meanflow.jvp_tangent: its MSE is that of the target built
  with the configured tangents (the d_t u term present for (v,0,1), absent for (v,0,0))."""
  cfg = meanflow_config(num_classes=0)
  cfg.update(r_neq_t_ratio=1.0, adaptive_p=0.0, class_dropout=0.0, jvp_tangent=tangent)
  rng = np.random.default_rng(1)
  r, t = _times(16, rng)
  x, e = jnp.asarray(MU + S * rng.normal(size=(16, 1))), jnp.asarray(rng.normal(size=(16, 1)))
  z = (1 - t[:, None]) * x + t[:, None] * e
  # The network is the true u; the loss uses the conditional v = e - x as the tangent, so compare
  # against the same jvp written out with the model's exact derivative along (e - x, 0, 1).
  _, dudt_z = jax.jvp(lambda z_: gaussian_u(z_, r, t), (z,), (e - x,))
  _, d_t = jax.jvp(lambda t_: gaussian_u(z, r, t_), (t,), (jnp.ones_like(t),))
  dudt = dudt_z + (d_t if tangent == "v,0,1" else 0.0)
  want = jnp.mean(jnp.square(gaussian_u(z, r, t) - ((e - x) - (t - r)[:, None] * dudt)))
  _, metrics = jax.jit(lambda x, r, t, e: meanflow.meanflow_loss_from_draws(
      gaussian_u, x, jnp.zeros((16,), jnp.int32), r, t, e, jnp.zeros((16,), bool), cfg))(x, r, t, e)
  np.testing.assert_allclose(metrics["mse"], want, rtol=1e-10)


class RecordingModel:
  """Stands in for a Flax module: records the conditions meanflow_u_fn passes to apply."""

  def __init__(self, condition_names):
    self.condition_names = condition_names
    self.seen = None

  def apply(self, params, z, conditions, labels):
    self.seen = conditions
    return z


@pytest.mark.parametrize("choice, want", [("t,t-r", lambda r, t: (t, t - r)),
                                          ("r,t", lambda r, t: (r, t)),
                                          ("t,r", lambda r, t: (t, r)),
                                          ("t-r", lambda r, t: (t - r,))])
def test_time_conditioning_passes_exactly_the_claimed_scalars(choice, want):
  config = tiny.get_config()
  config.meanflow.time_conditioning = choice
  model = RecordingModel(ts.condition_names(config))
  r, t = jnp.array([0.125, 0.25]), jnp.array([0.5, 0.875])
  meanflow_u_fn(model, None)(jnp.zeros((2, 1)), r, t, None)
  assert len(model.seen) == len(want(r, t))
  for got, expected in zip(model.seen, want(r, t)):
    np.testing.assert_array_equal(got, expected)


def _embedders(config):
  shapes = jax.eval_shape(lambda k: ts.build_model(config).init(k, *ts.example_inputs(config)),
                          jax.random.key(0))
  return sorted(k for k in shapes["params"] if k.endswith("_embedder") and k != "label_embedder")


def test_time_conditioning_sets_the_dit_embedders():
  """One timestep embedder per named scalar; the default keeps its parameter names."""
  config = tiny.get_config()
  got = {}
  for choice in meanflow.TIME_CONDITIONINGS:
    config.meanflow.time_conditioning = choice
    got[choice] = _embedders(config)
  assert got == {"t,t-r": ["t_embedder", "t_minus_r_embedder"], "r,t": ["r_embedder", "t_embedder"],
                 "t,r": ["r_embedder", "t_embedder"], "t-r": ["t_minus_r_embedder"]}


def test_t_minus_r_network_sees_only_the_gap():
  """An initialised MLP with time_conditioning 't-r' gives the same u for (r, t) and (r + d, t + d)
  (dyadic values, so t - r is exact), and a different u for another gap; with 't,t-r' the shift
  changes u."""
  config = tiny.get_config()
  config.model.update(name="mlp", mlp_widths=(16,))
  z = jnp.asarray(np.random.default_rng(2).normal(size=(2, 8, 8, 1)), jnp.float32)
  labels = jnp.array([1, 2], jnp.int32)
  r, t, d = jnp.array([0.125, 0.25]), jnp.array([0.5, 0.75]), 0.125
  outputs = {}
  for choice in ("t-r", "t,t-r"):
    config.meanflow.time_conditioning = choice
    model = ts.build_model(config)
    params = jax.jit(model.init)(jax.random.key(0), *ts.example_inputs(config))
    u_fn = jax.jit(meanflow_u_fn(model, params))
    outputs[choice] = [u_fn(z, r_, t_, labels) for r_, t_ in ((r, t), (r + d, t + d), (r, t + d))]
  same, shifted, wider = outputs["t-r"]
  np.testing.assert_array_equal(same, shifted)
  assert np.abs(same - wider).max() > 1e-4
  same, shifted, _ = outputs["t,t-r"]
  assert np.abs(same - shifted).max() > 1e-4


@pytest.mark.parametrize("field, value", [("jvp_tangent", "v,1"), ("jvp_tangent", "(v, 0, 1)"),
                                          ("time_conditioning", "t,t"),
                                          ("time_conditioning", "t - r")])
def test_bad_values_name_the_field_and_the_allowed_values(field, value):
  """The trainer's config check (run before anything compiles) refuses the value, naming the field,
  the allowed values (the keys of meanflow's tables) and the fix; the core's table lookups then
  fail loudly rather than parse a near miss."""
  config = tiny.get_config()
  config.meanflow[field] = value
  allowed = list(meanflow.JVP_TANGENTS if field == "jvp_tangent" else meanflow.TIME_CONDITIONINGS)
  with pytest.raises(config_checks.ConfigError, match=re.escape(
      f"meanflow.{field}={value!r}: allowed values are {allowed}. Fix: set "
      f"--config.meanflow.{field} to {allowed[0]} (paper)")):
    config_checks.validate(config)
  with pytest.raises(KeyError, match=re.escape(repr(value))):
    if field == "jvp_tangent":
      meanflow.average_velocity_target(gaussian_u, *[jnp.ones((2,))] * 4, None, value)
    else:
      ts.condition_names(config)


def test_models_that_cannot_take_a_time_conditioning_are_refused_before_compiling():
  unet = cifar10_unet.get_config()
  unet.meanflow.time_conditioning = "t-r"
  with pytest.raises(config_checks.ConfigError, match=r"meanflow\.time_conditioning='t-r'.*unet"):
    config_checks.validate_static(unet)
  drift = drifting_toy.get_config()
  drift.meanflow.time_conditioning = "r,t"
  with pytest.raises(config_checks.ConfigError, match=r"method='meanflow' only"):
    config_checks.validate_static(drift)
  for choice in meanflow.TIME_CONDITIONINGS:  # Every value passes with a DiT.
    config = tiny.get_config()
    config.meanflow.time_conditioning = choice
    config_checks.validate_static(config)
