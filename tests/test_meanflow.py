"""The MeanFlow objective against mathematics: finite differences, analytic Gaussian flows, formulas."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.base import meanflow_config
from mf_jax import meanflow, sampling
from mf_jax.models.dit import DiT

MU, S = 1.5, 0.5  # Data x ~ N(MU, S^2).


# --- Analytic fields for Gaussian data -------------------------------------------------------
# With x ~ N(mu, s^2) and z_t = (1 - t) x + t e, every probability-flow trajectory is
# z_t = m_t + sigma_t xi for a fixed xi, with m_t = (1 - t) mu and sigma_t^2 = (1 - t)^2 s^2 + t^2.

def _m(t):
  return (1 - t) * MU


def _sigma(t):
  return jnp.sqrt((1 - t) ** 2 * S ** 2 + t ** 2)


def analytic_v(z, t):
  """Marginal velocity E[e - x | z_t = z] = d/dt (m_t + sigma_t xi)."""
  dsigma = (t - (1 - t) * S ** 2) / _sigma(t)
  return -MU + dsigma * (z - _m(t)) / _sigma(t)


def analytic_u(z, r, t, labels=None):
  """Average velocity (z_t - z_r) / (t - r) along the trajectory through z at time t."""
  r, t = r[:, None], t[:, None]
  gap = t - r
  safe = jnp.where(gap > 1e-7, gap, 1.0)
  z_r = _m(r) + _sigma(r) * (z - _m(t)) / _sigma(t)
  return jnp.where(gap > 1e-7, (z - z_r) / safe, analytic_v(z, t))


def test_identity_recovers_analytic_average_velocity():
  """With the true fields, u_tgt = v - (t - r) du/dt equals the analytic u (MeanFlow identity)."""
  with jax.enable_x64(True):
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    a, b = jax.random.uniform(k1, (256,)), jax.random.uniform(k2, (256,))
    t, r = jnp.maximum(a, b), jnp.minimum(a, b)
    z = jax.random.normal(k3, (256, 1)) * 2.0
    u, u_tgt = meanflow.average_velocity_target(analytic_u, z, r, t, analytic_v(z, t[:, None]), None)
    # Float64 exactness (tests/README.md): the identity holds to rounding (measured 1.8e-15).
    np.testing.assert_allclose(u_tgt, analytic_u(z, r, t), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(u, analytic_u(z, r, t), rtol=1e-12, atol=1e-12)


def test_tangent_order_is_v_0_1(x64):
  """u = z r + t^2 has du/dt = v r + 2 t; swapped tangents (v, 1, 0) would give v r + z."""
  u_fn = lambda z, r, t, _: z * r[:, None] + (t ** 2)[:, None]
  z, v = jnp.array([[2.0], [-1.0]]), jnp.array([[0.5], [3.0]])
  r, t = jnp.array([0.2, 0.1]), jnp.array([0.7, 0.9])
  _, u_tgt = meanflow.average_velocity_target(u_fn, z, r, t, v, None)
  dudt = v * r[:, None] + 2 * t[:, None]
  np.testing.assert_allclose(u_tgt, v - (t - r)[:, None] * dudt, rtol=1e-12)
  swapped = v * r[:, None] + z
  assert not np.allclose(u_tgt, v - (t - r)[:, None] * swapped)


def test_jvp_matches_finite_difference_on_random_dit():
  """du/dt from jax.jvp equals a central difference of s -> u(z + (s - t) v, r, s), in float64."""
  with jax.enable_x64(True):
    model = DiT(variant="S/2", depth=2, hidden_size=32, num_heads=2, image_size=8, channels=2,
                num_classes=3, dtype=jnp.float64, param_dtype=jnp.float64)
    kz, kv, kp, kn = jax.random.split(jax.random.key(1), 4)
    z = jax.random.normal(kz, (2, 8, 8, 2), jnp.float64)
    v = jax.random.normal(kv, z.shape, jnp.float64)
    r, t = jnp.array([0.1, 0.3]), jnp.array([0.6, 0.8])
    labels = jnp.array([0, 3])
    params = model.init(kp, z, (t, t - r), labels)
    # adaLN-Zero makes the initial output identically zero: perturb every weight so u is nontrivial.
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(kn, len(leaves))
    params = tree.unflatten([p + 0.1 * jax.random.normal(k, p.shape, p.dtype)
                             for p, k in zip(leaves, keys)])
    u_fn = lambda z_, r_, t_, y: model.apply(params, z_, (t_, t_ - r_), y)

    u, u_tgt = meanflow.average_velocity_target(u_fn, z, r, t, v, labels)
    dudt = (v - u_tgt) / (t - r)[:, None, None, None]
    h = 1e-5
    along = lambda s: u_fn(z + (s - t)[:, None, None, None] * v, r, s, labels)
    fd = (along(t + h) - along(t - h)) / (2 * h)
    assert float(jnp.abs(fd).max()) > 1e-2  # The check must not pass trivially.
    np.testing.assert_allclose(dudt, fd, rtol=1e-6, atol=1e-8)


def test_one_step_sampling_with_analytic_u_maps_noise_to_data():
  noise = jax.random.normal(jax.random.key(2), (20000, 1))
  for steps in (1, 2):
    x = np.asarray(sampling.sample(analytic_u, noise, None, steps))
    n = len(x)
    assert abs(x.mean() - MU) < 4 * S / np.sqrt(n)
    assert abs(x.std() - S) < 4 * S / np.sqrt(2 * n)


def test_one_euler_step_of_instantaneous_velocity_collapses_to_mean():
  """The failure MeanFlow fixes: v(e, 1) = e - mu, so one Euler step lands every sample on mu."""
  noise = jax.random.normal(jax.random.key(3), (4096, 1))
  u_inst = lambda z, r, t, _: analytic_v(z, t[:, None])
  x = np.asarray(sampling.sample_flow_matching(u_inst, noise, None, 1))
  np.testing.assert_allclose(x, MU, atol=1e-5)
  # Many Euler steps do approach the data law.
  x = np.asarray(sampling.sample_flow_matching(u_inst, noise, None, 200))
  assert abs(x.std() - S) < 0.05


# --- Time sampler ------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler", ["logit_normal", "uniform"])
def test_sample_times(sampler):
  cfg = meanflow_config()
  cfg.time_sampler, cfg.r_neq_t_ratio = sampler, 0.25
  r, t = meanflow.sample_times(jax.random.key(0), 4000, cfg)
  r, t = np.asarray(r), np.asarray(t)
  assert np.all(r <= t) and np.all((r >= 0) & (t <= 1))
  assert np.sum(r != t) == 1000  # Exactly the configured fraction...
  assert np.all(r[::4] < t[::4])  # ...interleaved: every 4th sample, so each shard gets its share.
  if sampler == "logit_normal":
    # t is the max of two draws from sigmoid(N(-0.4, 1)); check the CDF P(t <= 0.5) = Phi(0.4)^2.
    assert abs(np.mean(t <= 0.5) - 0.6554 ** 2) < 0.03


# --- Guidance in the target --------------------------------------------------------------------

def _stub(z, r, t, labels):
  """A label-dependent stand-in network: 2 z + label."""
  return 2 * z + labels[:, None].astype(z.dtype)


def _guided(omega, kappa, t_lo=0.0, t_hi=1.0):
  cfg = meanflow_config(num_classes=10)
  cfg.guidance_omega, cfg.guidance_kappa = omega, kappa
  cfg.guidance_t_min, cfg.guidance_t_max = t_lo, t_hi
  return cfg


def test_no_guidance_returns_conditional_velocity():
  z, v = jnp.ones((4, 3)), jnp.arange(12.0).reshape(4, 3)
  out = meanflow.guided_velocity(_stub, z, jnp.full((4,), 0.5), v, jnp.arange(4),
                                 jnp.zeros(4, bool), _guided(1.0, 0.0))
  np.testing.assert_array_equal(out, v)


def test_guided_velocity_formula_dropout_and_interval(x64):
  omega, kappa = 3.0, 0.5
  z = jax.random.normal(jax.random.key(0), (4, 3))
  v = jax.random.normal(jax.random.key(1), (4, 3))
  labels = jnp.array([1, 2, 10, 4])  # Sample 2 was dropped to the null label 10.
  dropped = jnp.array([False, False, True, False])
  t = jnp.array([0.5, 0.2, 0.5, 0.9])  # Sample 3 lies outside the interval [0.1, 0.8].
  out = meanflow.guided_velocity(_stub, z, t, v, labels, dropped, _guided(omega, kappa, 0.1, 0.8))
  u_c, u_null = 2 * z + labels[:, None], 2 * z + 10.0
  expected = omega * v + kappa * u_c + (1 - omega - kappa) * u_null
  np.testing.assert_allclose(out[:2], expected[:2], rtol=1e-12)
  np.testing.assert_allclose(out[2:], v[2:], rtol=1e-12)


def test_guidance_enters_the_jvp_tangent(x64):
  """The guided loss, from given draws, against its formula written out by hand: the tangent of the
  jvp is v_tilde = omega v + kappa u(z, t, t | c) + (1 - omega - kappa) u(z, t, t | null), so with
  u = sin(z) (1 + t - r) + y / 10 the target is v_tilde - (t - r) (cos(z) v_tilde (1 + t - r) + sin(z))."""
  cfg = meanflow_config(num_classes=10)
  cfg.class_dropout, cfg.r_neq_t_ratio, cfg.adaptive_p = 0.0, 1.0, 0.0
  cfg.guidance_omega, cfg.guidance_kappa = 2.0, 0.3
  k = jax.random.split(jax.random.key(0), 4)
  x, e = jax.random.normal(k[0], (8, 3)), jax.random.normal(k[1], (8, 3))
  a, b = jax.random.uniform(k[2], (8,)), jax.random.uniform(k[3], (8,))
  t, r = jnp.maximum(a, b), jnp.minimum(a, b)
  labels = jnp.arange(8) % 10
  u_fn = lambda z, r, t, y: jnp.sin(z) * (1 + t - r)[:, None] + y[:, None] * 0.1
  mse = meanflow.meanflow_loss_from_draws(u_fn, x, labels, r, t, e, jnp.zeros(8, bool), cfg)[1]["mse"]
  x, e, t, r, y = (np.asarray(q, np.float64) for q in (x, e, t[:, None], r[:, None], labels[:, None]))
  z, v = (1 - t) * x + t * e, e - x
  v_tilde = 2.0 * v + 0.3 * (np.sin(z) + y / 10) + (1 - 2.0 - 0.3) * (np.sin(z) + 1.0)
  u = np.sin(z) * (1 + t - r) + y / 10
  target = v_tilde - (t - r) * (np.cos(z) * v_tilde * (1 + t - r) + np.sin(z))
  np.testing.assert_allclose(mse, np.mean((u - target) ** 2), rtol=1e-12)
  unguided = v - (t - r) * (np.cos(z) * v * (1 + t - r) + np.sin(z))
  assert abs(np.mean((u - unguided) ** 2) / float(mse) - 1) > 0.1  # Guidance matters here.


# --- Loss ----------------------------------------------------------------------------------

def test_ratio_zero_is_flow_matching(x64):
  """With r = t everywhere, the target ignores du/dt: adding (t - r) g(z, t) to u changes nothing."""
  cfg = meanflow_config(num_classes=10)
  x = jax.random.normal(jax.random.key(0), (32, 4))
  labels = jnp.arange(32) % 10
  base = lambda z, r, t, y: 0.5 * z + t[:, None]
  bent = lambda z, r, t, y: base(z, r, t, y) + ((t - r) * 7.0)[:, None] * jnp.cos(3 * z)
  for ratio, same in ((0.0, True), (0.5, False)):
    cfg.r_neq_t_ratio = ratio
    a = meanflow.meanflow_loss(base, x, labels, jax.random.key(1), cfg)[0]
    b = meanflow.meanflow_loss(bent, x, labels, jax.random.key(1), cfg)[0]
    assert np.isclose(a, b, rtol=1e-12) == same


def test_adaptive_weighting(x64):
  u = jnp.array([[1.0, 1.0], [3.0, 0.0]])
  tgt = jnp.zeros_like(u)
  d = np.array([2.0, 9.0])
  loss, mse = meanflow.adaptive_weighted_loss(u, tgt, p=1.0, c=1e-3)
  np.testing.assert_allclose(loss, np.mean(d / (d + 1e-3)), rtol=1e-12)
  np.testing.assert_allclose(mse, 11.0 / 4, rtol=1e-12)
  np.testing.assert_allclose(meanflow.adaptive_weighted_loss(u, tgt, 0.0, 1e-3)[0], d.mean(), rtol=1e-12)
  # The weight is stop-gradiented: d/du of d / sg(d + c) is 2 u / (d + c).
  grad = jax.grad(lambda u_: meanflow.adaptive_weighted_loss(u_, tgt, 1.0, 1e-3)[0])(u)
  np.testing.assert_allclose(grad, 2 * u / (d[:, None] + 1e-3) / 2, rtol=1e-12)


def test_gradient_flows_only_through_primal_u(x64):
  """d loss / d theta must not contain second-order terms from the target."""
  cfg = meanflow_config(num_classes=0)
  cfg.class_dropout, cfg.adaptive_p, cfg.r_neq_t_ratio = 0.0, 0.0, 1.0
  x = jax.random.normal(jax.random.key(0), (16, 2))
  labels = jnp.zeros(16, jnp.int32)
  key = jax.random.key(3)
  u_fn = lambda th: (lambda z, r, t, y: th * z * t[:, None])
  theta = 0.7
  g = jax.grad(lambda th: meanflow.meanflow_loss(u_fn(th), x, labels, key, cfg)[0])(theta)
  # Re-derive: with the target frozen at theta, only the primal u = theta z t carries gradient.
  def frozen(th):
    r, t = meanflow.sample_times(jax.random.split(key, 3)[0], 16, cfg)
    e = jax.random.normal(jax.random.split(key, 3)[1], x.shape)
    z = (1 - t[:, None]) * x + t[:, None] * e
    v = e - x
    _, tgt = meanflow.average_velocity_target(u_fn(theta), z, r, t, v, labels)
    return jnp.mean(jnp.sum((u_fn(th)(z, r, t, labels) - tgt) ** 2, axis=1))
  np.testing.assert_allclose(g, jax.grad(frozen)(theta), rtol=1e-10)


def test_gradient_of_a_nonlinear_net_matches_the_hand_derived_first_order_form(x64):
  """A second, independent check of the stop-gradient on the target: for u = th z^2 + th^2 t the
  loss gradient is mean_i sum_j 2 (u - tgt) (z^2 + 2 th t), derived by hand; differentiating through
  the target as well would add -2 (u - tgt) d tgt / d th, with d tgt / d th = -(t - r)(2 z v + 2 th)."""
  cfg = meanflow_config(num_classes=0)
  cfg.class_dropout, cfg.adaptive_p, cfg.r_neq_t_ratio = 0.0, 0.0, 1.0
  k = jax.random.split(jax.random.key(7), 4)
  x, e = jax.random.normal(k[0], (8, 2)), jax.random.normal(k[1], (8, 2))
  a, b = jax.random.uniform(k[2], (8,)), jax.random.uniform(k[3], (8,))
  t, r = jnp.maximum(a, b), jnp.minimum(a, b)
  labels, dropped = jnp.zeros(8, jnp.int32), jnp.zeros(8, bool)
  u_fn = lambda th: (lambda z, r_, t_, y: th * z ** 2 + th ** 2 * t_[:, None])
  theta = 0.7
  g = jax.grad(lambda th: meanflow.meanflow_loss_from_draws(u_fn(th), x, labels, r, t, e, dropped,
                                                            cfg)[0])(theta)
  x, e, t, r = (np.asarray(q, np.float64) for q in (x, e, t[:, None], r[:, None]))
  z, v = (1 - t) * x + t * e, e - x
  u = theta * z ** 2 + theta ** 2 * t
  target = v - (t - r) * (2 * theta * z * v + theta ** 2)  # du/dt along (v, 0, 1).
  want = np.mean(np.sum(2 * (u - target) * (z ** 2 + 2 * theta * t), axis=1))
  np.testing.assert_allclose(g, want, rtol=1e-12)
  through_target = np.mean(np.sum(2 * (u - target) * (t - r) * (2 * z * v + 2 * theta), axis=1))
  assert abs(through_target) > 1e-2 * abs(want)  # The term a missing stop-gradient would add.


# --- Bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("field,value,match", [
    ("guidance_kappa", 1.0, "guidance_kappa"),
    ("r_neq_t_ratio", 1.5, "r_neq_t_ratio"),
    ("r_neq_t_ratio", -0.1, r"\[0, 1\]"),
    ("time_sampler", "beta", "logit_normal"),
])
def test_config_errors_name_the_setting(field, value, match):
  cfg = meanflow_config()
  cfg[field] = value
  with pytest.raises(ValueError, match=match):
    meanflow.validate_config(cfg)


def test_labels_out_of_range():
  with pytest.raises(ValueError, match=r"\[0, 10\)"):
    meanflow.validate_labels(np.array([0, 10]), 10)
  meanflow.validate_labels(np.array([0, 9]), 10)
