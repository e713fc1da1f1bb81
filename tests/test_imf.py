"""The iMF objective and sampler (mf_jax/imf.py) against analytic truth and closed-form laws.

Exact fields: for Gaussian data x ~ N(0, sigma^2 I) and z_t = (1 - t) x + t e, z_t ~ N(0, s_t^2 I)
with s_t^2 = (1 - t)^2 sigma^2 + t^2. The marginal velocity is E[e - x | z_t = z] =
Cov(e - x, z_t) / s_t^2 z = (t - (1 - t) sigma^2) / s_t^2 z = (s_t' / s_t) z, whose flow is
z_t = (s_t / s_r) z_r, so the average velocity over [r, t] is u(z, r, t) = (1 - s_r / s_t) z / (t - r).
By the MeanFlow identity u + (t - r) du/dt = v along the flow.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mf_jax import imf

SIGMA = 0.7


def _s(t):
  return jnp.sqrt((1 - t) ** 2 * SIGMA ** 2 + t ** 2)


def _bc(a, like):
  return a.reshape(a.shape + (1,) * (like.ndim - a.ndim))


def exact_v(z, t):
  return _bc((t - (1 - t) * SIGMA ** 2) / _s(t) ** 2, z) * z


def exact_net(z, t, h, omega, t_min, t_max, labels):
  """(u, v) of the Gaussian flow; no dependence on the conditions, so v_g = e - x."""
  r = t - h
  safe_h = jnp.where(h > 0, h, 1.0)  # r = t rows take v; keeps the other branch finite.
  u = jnp.where(_bc(h > 0, z), _bc((1 - _s(r) / _s(t)) / safe_h, z) * z, exact_v(z, t))
  return u, exact_v(z, t)


def _data(key, batch=64):
  k_x, k_y, k_d = jax.random.split(key, 3)
  x = SIGMA * jax.random.normal(k_x, (batch, 3, 3, 2))
  labels = jax.random.randint(k_y, (batch,), 0, 10)
  config = imf.default_config()
  config.num_classes = 10
  return x, labels, imf.sample_draws(k_d, x, config), config


def test_exact_fields_give_v_and_equal_losses(x64):
  """V = u + (t - r) sg(du/dt) is the true velocity; the u and v losses are then equal."""
  x, labels, draws, config = _data(jax.random.key(0))
  assert x.dtype == jnp.float64
  t, r = draws.t, draws.r
  assert int(jnp.sum(t != r)) == x.shape[0] // 2
  z = (1 - _bc(t, x)) * x + _bc(t, x) * draws.e
  v_g, v_c = imf.guided_target(exact_net, z, t, draws.e - x, labels, draws.omega, draws.t_min,
                               draws.t_max, config.num_classes)
  np.testing.assert_allclose(v_c, exact_v(z, t), rtol=1e-12)
  np.testing.assert_allclose(v_g, draws.e - x, rtol=1e-12, atol=1e-12)
  V, v, _ = imf.compound_velocity(exact_net, z, r, t, v_c, draws.omega, draws.t_min, draws.t_max,
                               labels)
  truth = exact_v(z, t)
  assert float(jnp.linalg.norm(V - truth) / jnp.linalg.norm(truth)) < 1e-10
  loss, m = imf.imf_loss_from_draws(exact_net, x, labels, draws, config)
  assert abs(float(m["loss_u"] - m["loss_v"])) < 1e-10 * float(m["loss_v"])
  assert float(m["loss_v"]) > 0.1  # e - x is not the marginal velocity: a real comparison.
  assert 0 < float(loss) < 2  # Each weighted term d / (d + c) is below 1.


def test_guided_target_and_dropout(x64):
  """v_g and the tangent against their definitions, with a net whose v sees label and omega."""
  x, labels, draws, config = _data(jax.random.key(1))
  draws = draws._replace(dropped=jnp.arange(x.shape[0]) < 5)
  calls = []

  def net(z, t, h, omega, t_min, t_max, y):
    calls.append(None)
    a = _bc(1.0 + 0.1 * y + 0.3 * (1.0 - 1.0 / omega) + h + t_min + (1.0 - t_max), z)
    return 0.5 * a * z, a * z

  t = draws.t
  z = (1 - _bc(t, x)) * x + _bc(t, x) * draws.e
  v_g, v_c = imf.guided_target(net, z, t, draws.e - x, labels, draws.omega, draws.t_min,
                               draws.t_max, config.num_classes)
  assert len(calls) == 2  # One conditional and one unconditional v-head call.
  inside = np.asarray((t >= draws.t_min) & (t <= draws.t_max))
  assert 0 < inside.sum() < len(inside)  # Both branches of omega' are exercised.
  w = np.where(inside, draws.omega, 1.0)
  a_c = 1.0 + 0.1 * np.asarray(labels) + 0.3 * (1.0 - 1.0 / w)
  a_u = 1.0 + 0.1 * config.num_classes
  want_c = a_c[:, None, None, None] * np.asarray(z)
  want_g = np.asarray(draws.e - x) + ((1 - 1 / w) * (a_c - a_u))[:, None, None, None] * np.asarray(z)
  np.testing.assert_allclose(v_c, want_c, rtol=1e-12)
  np.testing.assert_allclose(v_g, want_g, rtol=1e-12, atol=1e-12)
  # The main forward: sampled omega and interval, h = t - r, null label and target e - x on
  # dropped rows.
  drop = np.asarray(draws.dropped)
  y = np.where(drop, config.num_classes, np.asarray(labels))
  a = (1.0 + 0.1 * y + 0.3 * (1.0 - 1.0 / np.asarray(draws.omega)) + np.asarray(t - draws.r)
       + np.asarray(draws.t_min) + 1.0 - np.asarray(draws.t_max))
  target = np.where(drop[:, None, None, None], np.asarray(draws.e - x), want_g)
  want_mse_v = np.mean((a[:, None, None, None] * np.asarray(z) - target) ** 2)
  _, m = imf.imf_loss_from_draws(net, x, labels, draws, config)
  np.testing.assert_allclose(m["loss_v"], want_mse_v, rtol=1e-12)


@pytest.mark.parametrize("beta", [1.0, 2.0])
def test_omega_law(beta):
  """Mean, median and P(omega <= 2) of p(omega) ~ omega^-beta on [1, 8), within 5 standard errors."""
  n, top = 400_000, 8.0
  omega = np.asarray(imf.sample_omega(jax.random.key(2), n, beta, top), np.float64)
  assert omega.min() >= 1.0 and omega.max() < top
  if beta == 1.0:  # Density 1 / (omega ln 8); CDF ln(omega) / ln 8.
    z = math.log(top)
    mean, second = (top - 1) / z, (top ** 2 - 1) / (2 * z)
    median, density = math.sqrt(top), lambda w: 1 / (w * z)
    p2 = math.log(2) / z
  else:  # beta = 2: density 1 / (omega^2 (1 - 1/8)); CDF (1 - 1/omega) / (1 - 1/8).
    z = 1 - 1 / top
    mean, second = math.log(top) / z, (top - 1) / z
    median, density = 1 / (1 - z / 2), lambda w: 1 / (w ** 2 * z)
    p2 = 0.5 / z
  var = second - mean ** 2
  assert abs(omega.mean() - mean) < 5 * math.sqrt(var / n)
  assert abs(np.median(omega) - median) < 5 / (2 * density(median) * math.sqrt(n))
  assert abs(np.mean(omega <= 2) - p2) < 5 * math.sqrt(p2 * (1 - p2) / n)


def test_draws_layout_and_interval_law():
  """r = t rows get [0, 1]; the rest t_min ~ U[0, 1/2), t_max ~ U[1/2, 1); dropout on r = t rows."""
  n = 20_000
  config = imf.default_config()
  d = imf.sample_draws(jax.random.key(3), jnp.zeros((n, 1)), config)
  same = np.asarray(d.r == d.t)
  assert abs(same.mean() - 0.5) < 1e-12
  assert np.all(np.asarray(d.t_min)[same] == 0) and np.all(np.asarray(d.t_max)[same] == 1)
  lo, hi = np.asarray(d.t_min)[~same], np.asarray(d.t_max)[~same]
  assert lo.min() >= 0 and lo.max() < 0.5 and hi.min() >= 0.5 and hi.max() < 1
  se = math.sqrt(0.25 / 12 / lo.size)  # Standard error of a mean of U over a length-1/2 interval.
  assert abs(lo.mean() - 0.25) < 5 * se and abs(hi.mean() - 0.75) < 5 * se
  dropped = np.asarray(d.dropped)
  assert abs(dropped.mean() - 0.1) < 5 * math.sqrt(0.09 / n) and not dropped[~same].any()


def test_sampler_exact_and_conditions(x64):
  """1- and 2-NFE on the exact field map e to sigma e; the sampling conditions reach the net."""
  e = jax.random.normal(jax.random.key(4), (6, 2, 2, 3))
  labels = jnp.arange(6)
  for steps in (1, 2):
    x = imf.sample(exact_net, e, labels, steps, 4.0, 0.3, 0.7)
    np.testing.assert_allclose(x, SIGMA * e, rtol=1e-12, atol=1e-12)

  def net(z, t, h, omega, t_min, t_max, y):
    return _bc(1 - 1 / omega + t_min + 2 * t_max + 3 * h + 5 * t, z) * z, None
  for omega in (2.0, 8.0):  # One step: x = e - u(e, t = 1, h = 1).
    x = imf.sample(net, e, labels, 1, omega, 0.3, 0.7)
    np.testing.assert_allclose(x, (1 - (1 - 1 / omega + 0.3 + 1.4 + 3 + 5)) * e, rtol=1e-12)


def mlp_net(params):
  """A small nonlinear network of all its inputs: (u, v) from one hidden layer (pMF's tests read
  its outputs as images)."""
  def net(z, t, h, omega, t_min, t_max, y):
    b = z.shape[0]
    scalars = jnp.stack([t, h, 1 - 1 / omega, t_min, t_max], axis=1)
    a = jnp.tanh(z.reshape(b, -1) @ params["w"] + scalars @ params["c"] + params["emb"][y])
    return (jnp.tanh(a @ params["wu"]).reshape(z.shape), (a @ params["wv"]).reshape(z.shape))
  return net


def mlp_params(keys, d, hidden=12, classes=5):
  """mlp_net's parameters for inputs of d values, from 5 keys."""
  return dict(w=jax.random.normal(keys[0], (d, hidden)) / 3,
              c=jax.random.normal(keys[1], (5, hidden)),
              emb=jax.random.normal(keys[2], (classes + 1, hidden)),
              wu=jax.random.normal(keys[3], (hidden, d)), wv=jax.random.normal(keys[4], (hidden, d)))


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 1.0])
def test_split_loss_equals_reference(x64, ratio):
  """The per-part loss (plain forward on r = t rows, v_c from the forward's own v head) has the
  reference's loss, metrics and gradient, in float64."""
  k = jax.random.split(jax.random.key(5), 7)
  d, hidden, classes, batch = 8, 12, 5, 16
  params = mlp_params(k[:5], d, hidden, classes)
  x = jax.random.normal(k[5], (batch, 2, 2, 2))
  labels = jnp.arange(batch) % classes
  config = imf.default_config()
  config.update(num_classes=classes, r_neq_t_ratio=ratio, class_dropout=0.3)
  draws = imf.sample_draws(k[6], x, config)
  assert draws.dropped.any() and (ratio == 0 or (draws.r != draws.t).any())

  def run(loss_fn):
    return jax.value_and_grad(lambda p: loss_fn(mlp_net(p), x, labels, draws, config),
                              has_aux=True)(params)
  (_, want_m), want_g = run(imf.imf_loss_from_draws)
  (_, got_m), got_g = run(imf.imf_loss_split_from_draws)
  for name in ("loss", "loss_u", "loss_v"):
    np.testing.assert_allclose(got_m[name], want_m[name], rtol=1e-10, err_msg=name)
  for name in params:
    assert float(jnp.linalg.norm(got_g[name] - want_g[name])) <= 1e-10 * float(
        jnp.linalg.norm(want_g[name])), name
