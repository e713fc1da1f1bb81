"""pMF's perceptual distances: one random resized crop per sample, shared by the prediction and the
real image, then LPIPS and the squared distance of ConvNeXt-V2 pooled features.

Pure functions of arrays and frozen-network closures; the objective does the t < max_t masking and
the adaptive weights. Images are [B, H, W, C] in [-1, 1] (data space).

Crop (as pMF's official code): per sample, area ~ U[0.08, 1] H W and log aspect ratio (w / h)
~ U[log 3/4, log 4/3]; w = round(sqrt(area aspect)), h = round(sqrt(area / aspect)), each clipped to
[1, W] / [1, H] (no retry loop, unlike torchvision); top ~ U{0..H-h}, left ~ U{0..W-w}. The box
[top, top + h) x [left, left + w) is resampled to size x size with
jax.image.scale_and_translate(method="cubic" (Keys, a = -0.5), antialias=True). The per-sample keys
are split as the official code splits them (split(key, B), then 4 per sample: area, aspect, top,
left), and the draws are float32 whatever the x64 mode, so a box depends only on the key.
"""
from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp

Array = jax.Array
CROP_SCALE = (0.08, 1.0)  # Area fraction range.
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)  # Aspect ratio (w / h) range, sampled uniformly in log.


def crop_boxes(key: Array, batch: int, height: int, width: int,
               scale: Tuple[float, float] = CROP_SCALE,
               ratio: Tuple[float, float] = CROP_RATIO) -> Tuple[Array, Array, Array, Array]:
  """(top, left, h, w), each [batch] int32: one random box per sample (module docstring)."""
  log_ratio = jnp.log(jnp.asarray(ratio, jnp.float32))

  def one(k):
    k_area, k_aspect, k_top, k_left = jax.random.split(k, 4)
    area = height * width * jax.random.uniform(k_area, (), jnp.float32, scale[0], scale[1])
    aspect = jnp.exp(jax.random.uniform(k_aspect, (), jnp.float32, log_ratio[0], log_ratio[1]))
    w = jnp.clip(jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32), 1, width)
    h = jnp.clip(jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32), 1, height)
    top = jax.random.randint(k_top, (), 0, height - h + 1)
    left = jax.random.randint(k_left, (), 0, width - w + 1)
    return top, left, h, w

  return jax.vmap(one)(jax.random.split(key, batch))


def resample_box(image: Array, top: Array, left: Array, h: Array, w: Array, size: int) -> Array:
  """The box [top, top + h) x [left, left + w) of image [H, W, C] -> [size, size, C] (cubic,
  antialiased when shrinking). Output pixel centre j + 1/2 samples input row top + (j + 1/2) h /
  size, so the box's edges map onto the output's edges."""
  dtype = jnp.result_type(image.dtype, jnp.float32)
  sy, sx = size / h.astype(dtype), size / w.astype(dtype)
  return jax.image.scale_and_translate(
      image, (size, size, image.shape[-1]), spatial_dims=(0, 1),
      scale=jnp.stack([sy, sx]), translation=jnp.stack([-top * sy, -left * sx]),
      method="cubic", antialias=True)


def crop_batch(images: Array, boxes, size: int) -> Array:
  """images [B, H, W, C], boxes (top, left, h, w) each [B] -> [B, size, size, C]."""
  return jax.vmap(lambda im, *box: resample_box(im, *box, size))(images, *boxes)


def paired_random_resized_crop(key: Array, a: Array, b: Array, size: int = 224
                               ) -> Tuple[Array, Array]:
  """The same random box per sample cut from a and b ([B, H, W, C]) -> two [B, size, size, C]."""
  if a.shape != b.shape:
    raise ValueError(f"paired crop of different shapes {a.shape} and {b.shape}")
  boxes = crop_boxes(key, *a.shape[:3])
  return crop_batch(a, boxes, size), crop_batch(b, boxes, size)


def lpips_distance(lpips_apply: Callable[[Array, Array], Array], a: Array, b: Array) -> Array:
  """LPIPS of each pair -> [B]; lpips_apply(a, b) returns B values in any shape ([B] from
  mf_jax.models.lpips.LPIPS, [B, 1, 1, 1] from the lpips packages)."""
  return lpips_apply(a, b).reshape(a.shape[0])


def convnext_distance(convnext_apply: Callable[[Array], Array], a: Array, b: Array) -> Array:
  """sum_c (f(a) - f(b))^2 -> [B], f = convnext_apply: images [B, 224, 224, 3] in [-1, 1] as they
  are (pMF feeds the crops with no ImageNet standardisation) -> pooled features [B, D]."""
  return jnp.sum(jnp.square(convnext_apply(a) - convnext_apply(b)), axis=-1)


def perceptual_distances(boxes, pred_x: Array, x: Array,
                         lpips_fn: Optional[Callable[[Array, Array], Array]],
                         convnext_fn: Optional[Callable[[Array], Array]], size: int = 224
                         ) -> Tuple[Array, Array]:
  """(LPIPS [B], ConvNeXt distance [B]) of pred_x and x both cut by `boxes` ((top, left, h, w),
  each [B], from crop_boxes) and resampled to size; a term whose network is None is zeros.
  Gradients flow into pred_x (and x, if it is not a constant)."""
  batch = pred_x.shape[0]
  zeros = jnp.zeros((batch,), jnp.result_type(pred_x.dtype, jnp.float32))
  if lpips_fn is None and convnext_fn is None:
    return zeros, zeros
  a, b = crop_batch(pred_x, boxes, size), crop_batch(x, boxes, size)
  lpips = zeros if lpips_fn is None else lpips_distance(lpips_fn, a, b)
  convnext = zeros if convnext_fn is None else convnext_distance(convnext_fn, a, b)
  return lpips, convnext


def lpips_closure(module, variables) -> Callable[[Array, Array], Array]:
  """(a, b) -> [B] of a frozen mf_jax.models.lpips.LPIPS."""
  return lambda a, b: module.apply(variables, a, b)


def convnext_closure(module, variables) -> Callable[[Array], Array]:
  """images -> pooled features [B, D] of a frozen mf_jax.models.convnext.ConvNeXtV2: the head
  LayerNorm of the last stage's spatial mean (features=False; its resize to 224 is the identity
  on 224 crops), the official forward_features."""
  return lambda images: module.apply(variables, images, features=False)
