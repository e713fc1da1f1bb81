"""EDM augmentation: identity at p = 0, labels that describe exactly the warp applied, determinism."""
import jax
import jax.numpy as jnp
import numpy as np

from mf_jax import augment

H = W = 16
KX, KY = 0.21, 0.17  # Spatial frequencies (rad / pixel) of the smooth test image.


def _image(x, y):
  """A smooth analytic image, three channels."""
  return np.stack([np.sin(KX * x + KY * y), np.cos(KX * x - KY * y), np.sin(0.5 * KX * x) * np.cos(KY * y)], -1)


def _grid():
  y, x = np.meshgrid(np.arange(H, dtype=np.float64), np.arange(W, dtype=np.float64), indexing="ij")
  return x, y


def test_identity_at_p_zero():
  config = augment.default_config()
  config.p = 0.0
  images = jax.random.normal(jax.random.key(0), (8, H, W, 3))
  out, labels = jax.jit(lambda im, k: augment.augment(im, k, config))(images, jax.random.key(1))
  np.testing.assert_array_equal(np.asarray(labels), 0.0)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(images))


def _source(label, config):
  """Where output pixel (x, y) reads the input, rebuilt from the label alone (module docstring)."""
  flip, w_s, a_c, a_s, w_tx, w_ty = np.asarray(label, np.float64)
  x, y = _grid()
  cx, cy = (W - 1) / 2, (H - 1) / 2
  q = np.stack([x - cx, y - cy])
  q = q - np.array([w_tx * W, w_ty * H])[:, None, None] * config.translate_std
  w_a, r = np.hypot(a_c, a_s), np.arctan2(a_s, a_c)
  a = 2.0 ** (w_a * config.aniso_std)
  rot = lambda th: np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
  undo_aniso = rot(r) @ np.diag([1 / a, a]) @ rot(-r)
  q = np.einsum("ij,jhw->ihw", undo_aniso, q) / 2.0 ** (w_s * config.scale_std)
  sx, sy = q[0] + cx, q[1] + cy
  if flip > 0.5:
    sx = (W - 1) - sx
  return sx, sy


def test_labels_describe_the_warp_applied():
  config = augment.default_config()
  config.update(p=1.0, xflip=1.0, aniso_rotate_prob=0.5)  # Every transform drawn for every image.
  x, y = _grid()
  n = 32
  images = jnp.asarray(np.broadcast_to(_image(x, y), (n, H, W, 3)), jnp.float32)
  out, labels = jax.jit(lambda im, k: augment.augment(im, k, config))(images, jax.random.key(3))
  out, labels = np.asarray(out), np.asarray(labels)
  assert 0 < labels[:, 0].sum() < n  # Some flipped, some not.
  assert np.all(labels[:, 1] != 0) and np.all(labels[:, 4] != 0)
  # Bilinear reads of sin/cos with frequencies k: error <= (kx^2 + ky^2) / 8, plus float32.
  tol = (KX ** 2 + KY ** 2) / 8 + 1e-5
  checked = 0
  for i in range(n):
    sx, sy = _source(labels[i], config)
    inside = (sx >= 0) & (sx <= W - 1) & (sy >= 0) & (sy <= H - 1)
    want = _image(sx, sy)[inside]
    np.testing.assert_allclose(out[i][inside], want, atol=tol)
    checked += inside.sum()
  assert checked > n * H * W / 3
  # A wrong reading of any label would miss by far more than tol: flip the translation's sign.
  wrong = labels[0].copy()
  wrong[4:] *= -1
  sx, sy = _source(wrong, config)
  inside = (sx >= 0) & (sx <= W - 1) & (sy >= 0) & (sy <= H - 1)
  assert np.abs(out[0][inside] - _image(sx, sy)[inside]).max() > 10 * tol


def test_deterministic_per_key_and_probabilities():
  config = augment.default_config()  # The CIFAR recipe: p = 0.12, every image may flip.
  images = jax.random.normal(jax.random.key(0), (2000, 4, 4, 1))
  fn = jax.jit(lambda k: augment.augment(images, k, config))
  (a, la), (b, lb) = fn(jax.random.key(5)), fn(jax.random.key(5))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_array_equal(np.asarray(la), np.asarray(lb))
  la = np.asarray(la)
  assert abs(la[:, 0].mean() - 0.5) < 0.05
  for col in (1, 2, 4):  # Scaling, anisotropy, translation: each with probability p.
    assert abs((la[:, col] != 0).mean() - 0.12) < 0.03
