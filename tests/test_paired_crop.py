"""pMF's paired random resized crop and perceptual distances (mf_jax/perceptual.py).

The boxes' law is checked by its statistics over many draws (bounds of several standard errors,
fixed keys), the resampling against PIL's bicubic resize of the same box (PIL uses the same Keys
kernel, a = -0.5, widened by the shrink factor, with double-precision coefficients: an independent
implementation of the same filter), and the pairing by an affine relation between the two images.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from mf_jax import perceptual
from mf_jax.models import convnext

# float32 resampling of values |x| <= 1 with weights summing to 1 (|w| summing to < 1.5) over < 20
# taps: rounding stays below 20 x 1.5 x eps32 ~ 4e-6.
ATOL32 = 1e-5


# Jitted once per shape (eager op-by-op dispatch would compile every small op).
crop_boxes = jax.jit(perceptual.crop_boxes, static_argnums=(1, 2, 3), static_argnames=("scale", "ratio"))
paired_crop = jax.jit(perceptual.paired_random_resized_crop, static_argnames=("size",))
crop_batch = jax.jit(perceptual.crop_batch, static_argnums=(2,))
distances = jax.jit(perceptual.perceptual_distances, static_argnums=(3, 4, 5))


def _images(shape, seed=0):
  return jax.random.uniform(jax.random.key(seed), shape, jnp.float32, -1, 1)


def test_both_images_get_the_same_box_and_each_sample_its_own():
  a = _images((6, 64, 96, 3))
  b = 2 * a + 0.5  # The crop is linear and its weights sum to 1: the same box gives 2 a' + 0.5.
  ca, cb = paired_crop(jax.random.key(1), a, b, size=40)
  assert ca.shape == cb.shape == (6, 40, 40, 3)
  np.testing.assert_allclose(cb, 2 * ca + 0.5, atol=3 * ATOL32)
  # A different second image: still cut at the boxes crop_boxes draws from the same key.
  c = _images((6, 64, 96, 3), seed=2)
  boxes = crop_boxes(jax.random.key(1), 6, 64, 96)
  _, cc = paired_crop(jax.random.key(1), a, c, size=40)
  np.testing.assert_array_equal(cc, crop_batch(c, boxes, 40))
  # Per sample: six copies of one image are cut at six different boxes.
  same = jnp.broadcast_to(a[:1], a.shape)
  cs, _ = paired_crop(jax.random.key(1), same, same, size=40)
  assert len({tuple(np.asarray(box)) for box in zip(*boxes)}) == 6
  assert all(np.abs(cs[i] - cs[j]).max() > 0.1 for i in range(6) for j in range(i))
  with pytest.raises(ValueError, match="different shapes"):
    perceptual.paired_random_resized_crop(jax.random.key(1), a, c[:, :32], size=40)


def test_box_statistics():
  n, size = 4000, 256
  top, left, h, w = (np.asarray(v) for v in crop_boxes(jax.random.key(7), n, size, size))
  assert np.all((h >= 1) & (w >= 1) & (top >= 0) & (left >= 0))
  assert np.all((top + h <= size) & (left + w <= size))
  frac = h * w / size**2
  # Area U[0.08, 1]: the smallest box, rounded side by side, loses < 0.5 px per side (> 0.078).
  assert frac.min() > 0.078 and frac.max() > 0.95
  # Below a fraction 3/4 no side is clipped (aspect <= 4/3), so P(frac < 1/2) = 0.42 / 0.92.
  p = 0.42 / 0.92
  assert abs(np.mean(frac < 0.5) - p) < 4 * np.sqrt(p * (1 - p) / n)
  # log(w / h) ~ U[log 3/4, log 4/3] where neither side is clipped; rounding moves it < 0.02.
  free = (h < size) & (w < size)
  log_aspect = np.log(w[free] / h[free])
  lo, hi = np.log(3 / 4), np.log(4 / 3)
  assert log_aspect.min() > lo - 0.02 and log_aspect.max() < hi + 0.02
  assert log_aspect.min() < lo + 0.02 and log_aspect.max() > hi - 0.02
  sd = (hi - lo) / np.sqrt(12)
  assert abs(log_aspect.mean()) < 4 * sd / np.sqrt(free.sum())
  # Position uniform over the H - h + 1 places: (top + 1/2) / (H - h + 1) has mean 1/2, sd < 0.29.
  for pos, extent in ((top, h), (left, w)):
    u = (pos + 0.5) / (size - extent + 1)
    assert abs(u.mean() - 0.5) < 4 * 0.29 / np.sqrt(n)
  # Not square: heights bounded by H, widths by W.
  top, left, h, w = (np.asarray(v) for v in crop_boxes(jax.random.key(8), 500, 48, 80))
  assert np.all((top + h <= 48) & (left + w <= 80)) and w.max() > 48


def test_full_box_at_the_output_size_is_the_image():
  x = _images((2, 224, 224, 3))
  boxes = crop_boxes(jax.random.key(0), 2, 224, 224, scale=(1.0, 1.0), ratio=(1.0, 1.0))
  for v, want in zip(boxes, (0, 0, 224, 224)):
    np.testing.assert_array_equal(v, want)
  # Scale 1: the cubic kernel is 1 at offset 0 and 0 at the other integers.
  np.testing.assert_allclose(crop_batch(x, boxes, 224), x, atol=ATOL32)


def test_crop_of_a_constant_image_is_constant():
  x = jnp.full((32, 40, 52, 3), 0.7, jnp.float32)  # 32 boxes: edges and corners are reached.
  ca, _ = paired_crop(jax.random.key(4), x, x, size=24)
  np.testing.assert_allclose(ca, 0.7, atol=ATOL32)


@pytest.mark.parametrize("box", [(10, 37, 150, 201),  # Enlarged 224/150 and 224/201.
                                 (3, 9, 250, 240),  # Shrunk: the kernel widens (antialias).
                                 (0, 0, 256, 256)])  # The whole image, shrunk.
def test_resampling_matches_pil_bicubic_on_the_box(box):
  top, left, h, w = box
  x = np.asarray(_images((256, 256, 3), seed=3))
  want = np.stack([np.asarray(Image.fromarray(x[..., c], mode="F").resize(
      (224, 224), Image.BICUBIC, box=(left, top, left + w, top + h))) for c in range(3)], -1)
  assert np.abs(want).max() > 0.5  # Not a degenerate comparison.
  resample = jax.jit(perceptual.resample_box, static_argnums=(5,))
  with jax.enable_x64(True):
    exact = resample(jnp.asarray(x, jnp.float64), *(jnp.asarray(v) for v in box), 224)
  # In float64 the filter is PIL's up to PIL's float32 output (and float32 sums): < 1e-6.
  np.testing.assert_allclose(exact, want, atol=1e-6)
  # float32 (the training path): the sample positions (up to 256 px) are rounded at eps32 and the
  # cubic interpolant of values in [-1, 1] has slopes < 4 per px: < 4 x 256 x eps32 = 1.2e-4.
  got = resample(jnp.asarray(x), *(jnp.asarray(v) for v in box), 224)
  np.testing.assert_allclose(got, exact, atol=4 * 256 * np.finfo(np.float32).eps)


def test_perceptual_distances_feed_the_same_crops_to_both_networks():
  boxes = crop_boxes(jax.random.key(5), 4, 64, 64)
  pred, x = _images((4, 64, 64, 3), seed=6), _images((4, 64, 64, 3), seed=7)
  zeros = distances(boxes, pred, x, None, None, 32)
  for z in zeros:
    np.testing.assert_array_equal(z, np.zeros(4))
  # Stand-in networks whose distances are known in closed form on the crops.
  l1 = lambda a, b: jnp.mean(jnp.abs(a - b), axis=(1, 2, 3))[:, None, None, None]  # [B,1,1,1].
  flat = lambda images: images.reshape(images.shape[0], -1)  # Identity features: no rescaling.
  lp, cn = distances(boxes, pred, x, l1, flat, 32)
  ca, cb = crop_batch(pred, boxes, 32), crop_batch(x, boxes, 32)
  np.testing.assert_allclose(lp, np.mean(np.abs(ca - cb), axis=(1, 2, 3)), rtol=1e-6)
  np.testing.assert_allclose(cn, np.sum(np.square(ca - cb), axis=(1, 2, 3)), rtol=1e-5)
  lp_only, cn_none = distances(boxes, pred, x, l1, None, 32)
  np.testing.assert_array_equal(lp_only, lp)
  np.testing.assert_array_equal(cn_none, np.zeros(4))
  # The gradient reaches pred_x.
  grad = jax.jit(jax.grad(
      lambda p: jnp.sum(perceptual.perceptual_distances(boxes, p, x, l1, flat, 32)[1])))(pred)
  assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0


def test_convnext_closure_is_the_pooled_head_on_raw_crops():
  """features=False: the head LayerNorm of the last stage's mean (the drifting features'
  global_mean), of the crops as given; its resize to 224 leaves a 224 crop unchanged."""
  model = convnext.ConvNeXtV2(depths=(1, 1, 1, 1), dims=(8, 8, 8, 8))
  variables = jax.jit(model.init)(jax.random.key(0), convnext.example_input())
  crops = _images((2, 224, 224, 3), seed=9)
  np.testing.assert_array_equal(jax.image.resize(crops, crops.shape, "bilinear"), crops)
  f = jax.jit(perceptual.convnext_closure(model, variables))
  feats = f(crops)
  assert feats.shape == (2, 8)
  all_sets = jax.jit(lambda x: model.apply(variables, x, features=True))(crops)
  np.testing.assert_allclose(feats, all_sets["global_mean"][:, 0], atol=1e-6)
  np.testing.assert_allclose(perceptual.convnext_distance(f, crops, crops[::-1]),
                             np.sum(np.square(feats - feats[::-1]), -1), rtol=1e-6)
