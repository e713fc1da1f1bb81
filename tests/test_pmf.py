"""The pMF objective and sampler (mf_jax/pmf.py) against finite differences and exact predictors.

A point mass: if every data row is the same image x0, the conditional velocity (z_t - x0) / t is
the marginal one, its paths are straight, so the average velocity over any [r, t] equals it and
the exact image predictor is x_hat = x0. Then V = u = v = v_t and pred_x = x0 for t >= t_clip:
every term of the loss, the perceptual ones included, is zero.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mf_jax import imf, meanflow, perceptual, pmf
from test_imf import mlp_net, mlp_params


def _bc(a, like):
  return a.reshape(a.shape + (1,) * (like.ndim - a.ndim))


def _config(classes=5, **kw):
  config = pmf.default_config()
  config.update(num_classes=classes, **kw)
  return config


_image_net = mlp_net  # Its (u, v) read as images (x_u, x_v).


def _params(key, d):
  return mlp_params(jax.random.split(key, 5), d)


def _stand_in_perceptual(size):
  """Distances of the crops from two fixed smooth feature maps (shapes as the real networks')."""
  def distances(pred_x, x, boxes):
    box = tuple(boxes[:, i] for i in range(4))
    a, b = (perceptual.crop_batch(im, box, size) for im in (pred_x, x))
    f = lambda im: jnp.stack([jnp.mean(jnp.sin(im), axis=(1, 2, 3)),
                              jnp.mean(im ** 2, axis=(1, 2, 3))], axis=1)
    return jnp.mean(jnp.square(jnp.tanh(a) - jnp.tanh(b)), axis=(1, 2, 3)), jnp.sum(
        jnp.square(f(a) - f(b)), axis=1)
  return distances


def test_x_to_velocity_and_its_jvp_against_finite_differences(x64):
  """u = (z - x_u) / clip(t, 0.05, 1); the jvp along (z: tangent, t: 1, r: 0) differentiates the
  1/t factor too (and not where the clip holds t), against central differences in float64."""
  key = jax.random.key(0)
  z, tangent = jax.random.normal(key, (2, 5, 3, 3, 1))
  t = jnp.array([0.9, 0.5, 0.2, 0.03, 0.97])
  r = jnp.array([0.1, 0.5, 0.0, 0.01, 0.0])
  omega, t_min, t_max = jnp.full((5,), 2.0), jnp.zeros(5), jnp.ones(5)
  labels = jnp.arange(5) % 5
  params = _params(jax.random.key(1), 9)
  net = pmf.velocity_net(_image_net(params), 0.05)
  x_u, x_v = _image_net(params)(z, t, t - r, omega, t_min, t_max, labels)
  u, v = net(z, t, t - r, omega, t_min, t_max, labels)
  clip = np.array([0.9, 0.5, 0.2, 0.05, 0.97])[:, None, None, None]
  np.testing.assert_allclose(u, (np.asarray(z) - np.asarray(x_u)) / clip, rtol=1e-14)
  np.testing.assert_allclose(v, (np.asarray(z) - np.asarray(x_v)) / clip, rtol=1e-14)

  u_of = lambda z_, t_, r_: net(z_, t_, t_ - r_, omega, t_min, t_max, labels)[0]
  _, dudt = jax.jvp(u_of, (z, t, r), (tangent, jnp.ones_like(t), jnp.zeros_like(r)))
  eps = 1e-6
  fd = (u_of(z + eps * tangent, t + eps, r) - u_of(z - eps * tangent, t - eps, r)) / (2 * eps)
  np.testing.assert_allclose(dudt, fd, rtol=1e-7, atol=1e-7)
  # The 1/t factor matters: without it (u read as z - x_u) the derivative is another one.
  plain = lambda z_, t_, r_: z_ - _image_net(params)(z_, t_, t_ - r_, omega, t_min, t_max,
                                                     labels)[0]
  _, d_plain = jax.jvp(plain, (z, t, r), (tangent, jnp.ones_like(t), jnp.zeros_like(r)))
  assert float(jnp.max(jnp.abs(d_plain[:3] - dudt[:3]))) > 1e-2


def _point_mass_batch(key, batch=16, classes=5):
  k_x, k_d, k_y = jax.random.split(key, 3)
  x0 = jax.random.normal(k_x, (1, 4, 4, 3))
  x = jnp.broadcast_to(x0, (batch, 4, 4, 3))
  labels = jax.random.randint(k_y, (batch,), 0, classes)
  config = _config(classes, noise_scale=2.0, perceptual_max_t=0.9)
  draws, boxes = pmf.sample_draws(k_d, x, config)
  # Times at least t_clip (where the clip holds t the parameterisation is not exact).
  draws = draws._replace(t=jnp.maximum(draws.t, 0.06), r=jnp.maximum(draws.r, 0.06))
  return x0, x, labels, draws, boxes, config


def test_exact_image_predictor_has_zero_loss(x64):
  """Point-mass data: the exact predictor x_hat = x0 gives loss 0 (perceptual terms included);
  a perturbed one does not. The per-part form (the trainer's; the whole-batch form equals it,
  test_split_loss_equals_reference)."""
  x0, x, labels, draws, boxes, config = _point_mass_batch(jax.random.key(2))
  assert bool(jnp.any(draws.r != draws.t)) and bool(jnp.any(draws.t < config.perceptual_max_t))
  perceptual_fn = _stand_in_perceptual(8)

  def predictor(offset):
    def net(z, t, h, omega, t_min, t_max, y):
      x_hat = jnp.broadcast_to(x0, z.shape) + offset * jnp.tanh(z)
      return x_hat, x_hat
    return pmf.velocity_net(net, config.t_clip)

  run = jax.jit(lambda offset: pmf.pmf_loss_split_from_draws(
      predictor(offset), x, labels, draws, boxes, config, perceptual_fn)[1])
  m = run(0.0)
  for name in ("loss", "loss_u", "loss_v", "loss_lpips", "loss_convnext"):
    assert abs(float(m[name])) < 1e-20, (name, float(m[name]))
  m = run(0.1)
  for name in ("loss", "loss_u", "loss_v", "loss_lpips", "loss_convnext"):
    assert float(m[name]) > 1e-6, name


def test_conditional_velocity_and_noise_scale(x64):
  """v_t = (z_t - x) / clip(t, 0.05, 1): e - x for t >= 0.05, t (e - x) / 0.05 below; e ~ N(0, s^2)."""
  x = jax.random.normal(jax.random.key(3), (4096, 2, 2, 1))
  config = _config(noise_scale=4.0, time_mu=-2.0)  # ~12% of t below 0.05.
  draws, boxes = pmf.sample_draws(jax.random.key(4), x, config)
  assert abs(float(jnp.std(draws.e)) - 4.0) < 0.05
  assert boxes.shape == (4096, 4) and jnp.issubdtype(boxes.dtype, jnp.integer)
  z = imf.noisy_sample(x, draws.e, draws.t)
  v_t = pmf.conditional_velocity(x, z, draws.t, config.t_clip)
  big = np.asarray(draws.t) >= 0.05
  assert 0.05 < 1 - big.mean() < 0.2
  np.testing.assert_allclose(np.asarray(v_t)[big], np.asarray(draws.e - x)[big], rtol=1e-10,
                             atol=1e-12)
  small = (np.asarray(draws.t)[~big] / 0.05)[:, None, None, None]
  np.testing.assert_allclose(np.asarray(v_t)[~big], small * np.asarray(draws.e - x)[~big],
                             rtol=1e-10, atol=1e-12)


def test_time_pairing_one_draw_on_r_eq_t_rows():
  """sort_eq_one_draw: r != t rows as "sort" (max, min of two draws), r = t rows keep the first
  draw alone (the official pMF code; iMF's keep the max)."""
  config = _config()
  key, n = jax.random.key(5), 4000
  r, t = meanflow.sample_times(key, n, config)
  r_sort, t_sort = meanflow.sample_times(key, n, _config(time_pairing="sort", time_mu=0.8,
                                                         time_sigma=0.8))
  k_a, _ = jax.random.split(key)
  a = jax.nn.sigmoid(0.8 + 0.8 * jax.random.normal(k_a, (n,)))
  distinct = np.asarray(r != t)
  assert distinct.mean() == 0.5
  np.testing.assert_array_equal(np.asarray(t)[distinct], np.asarray(t_sort)[distinct])
  np.testing.assert_array_equal(np.asarray(r)[distinct], np.asarray(r_sort)[distinct])
  np.testing.assert_array_equal(np.asarray(t)[~distinct], np.asarray(a)[~distinct])
  # The laws differ: E[max of two] > E[one draw].
  assert float(jnp.mean(t_sort[~distinct])) > float(jnp.mean(t[~distinct])) + 0.03


@pytest.mark.parametrize("ratio", [0.5])
def test_split_loss_equals_reference(x64, ratio):
  """Per-part and whole-batch pMF losses: equal loss, metrics and gradient in float64, the
  perceptual terms included (stand-in networks on the rows' crop boxes)."""
  k = jax.random.split(jax.random.key(6), 3)
  params = _params(k[0], 4 * 4 * 3)
  x = jax.random.normal(k[1], (16, 4, 4, 3))
  labels = jnp.arange(16) % 5
  config = _config(r_neq_t_ratio=ratio, class_dropout=0.3, noise_scale=2.0, perceptual_max_t=0.7)
  draws, boxes = pmf.sample_draws(k[2], x, config)
  perceptual_fn = _stand_in_perceptual(6)

  def run(loss_fn):
    return jax.jit(jax.value_and_grad(lambda p: loss_fn(
        pmf.velocity_net(_image_net(p), config.t_clip), x, labels, draws, boxes, config,
        perceptual_fn), has_aux=True))(params)
  (_, want_m), want_g = run(pmf.pmf_loss_from_draws)
  (_, got_m), got_g = run(pmf.pmf_loss_split_from_draws)
  assert 0 < float(want_m["loss_lpips"]) and 0 < float(want_m["loss_convnext"])
  for name in ("loss", "loss_u", "loss_v", "loss_lpips", "loss_convnext"):
    np.testing.assert_allclose(got_m[name], want_m[name], rtol=1e-10, err_msg=name)
  for name in params:
    assert float(jnp.linalg.norm(got_g[name] - want_g[name])) <= 1e-10 * float(
        jnp.linalg.norm(want_g[name])), name


def test_perceptual_terms_mask_weights_and_gradient(x64):
  """Rows with t >= perceptual_max_t add nothing and get no gradient; the rest add
  lpips_weight w(d_lpips) + convnext_weight w(d_convnext), w(d) = d / sg(d + c), through
  pred_x = z - t u."""
  b = 6
  k = jax.random.split(jax.random.key(7), 3)
  z, x = jax.random.normal(k[0], (2, b, 4, 4, 3))
  u = jax.random.normal(k[1], (b, 4, 4, 3))
  t = jnp.array([0.1, 0.5, 0.79, 0.8, 0.9, 0.3])
  boxes = jnp.stack(perceptual.crop_boxes(k[2], b, 4, 4), axis=1)
  config = _config(perceptual_max_t=0.8, lpips_weight=0.4, convnext_weight=0.1)
  fn = _stand_in_perceptual(5)

  @jax.jit
  def weighted(u_):
    part = imf.Part(rows=dict(z=z, t=t, x=x, crop_boxes=boxes), u=u_, V=u_, v=u_, v_g=u_)
    return pmf.perceptual_terms(part, fn, config)
  total, d_lpips, d_convnext = weighted(u)
  a, c = jax.jit(fn)(z - t[:, None, None, None] * u, x, boxes)
  keep = np.asarray(t) < 0.8
  np.testing.assert_allclose(d_lpips, np.sum(np.asarray(a)[keep]), rtol=1e-12)
  np.testing.assert_allclose(d_convnext, np.sum(np.asarray(c)[keep]), rtol=1e-12)
  w = lambda d: d / (d + 0.01)
  want = np.sum((0.4 * w(np.asarray(a)) + 0.1 * w(np.asarray(c)))[keep])
  np.testing.assert_allclose(total, want, rtol=1e-12)
  grad = jax.jit(jax.grad(lambda u_: weighted(u_)[0]))(u)
  norms = np.asarray(jnp.sqrt(jnp.sum(grad ** 2, axis=(1, 2, 3))))
  assert np.all(norms[~keep] == 0) and np.all(norms[keep] > 0)


def test_sampler_noise_scale_and_one_step_is_x_u(x64):
  """1-NFE: z_1 = s e and the sample is x_u(z_1) exactly (z_1 - 1 * (z_1 - x_u) / 1)."""
  params = _params(jax.random.key(8), 2 * 2 * 3)
  e = jax.random.normal(jax.random.key(9), (4, 2, 2, 3))
  labels = jnp.arange(4)
  image = _image_net(params)
  net = pmf.velocity_net(image, 0.05)
  got = pmf.sample(net, e, labels, 1, 3.0, 0.2, 0.7, noise_scale=2.0)
  ones = jnp.ones(4)
  want = image(2.0 * e, ones, ones, 3.0 * ones, 0.2 * ones, 0.7 * ones, labels)[0]
  np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
  # Two steps: the same update as iMF's sampler on the velocity network.
  np.testing.assert_allclose(pmf.sample(net, e, labels, 2, 3.0, 0.2, 0.7, 2.0),
                             imf.sample(net, 2.0 * e, labels, 2, 3.0, 0.2, 0.7), rtol=1e-12)
