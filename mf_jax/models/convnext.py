"""ConvNeXt-V2 as a frozen feature network for pixel-space drifting (the release's pixel configs).

The Drifting release's pixel models (configs/gen/pixel_sota_*.yaml: feature.use_convnext) add the
features of an ImageNet-22k ConvNeXt-V2-Base (Hugging Face facebook/convnextv2-base-22k-224:
depths 3-3-27-3, widths 128-256-512-1024) to those of the pixel MAE. Layout, channels-last:
  stem: 4x4 conv stride 4 (bias) + LayerNorm; downsampling i = 1..3: LayerNorm + 2x2 conv stride 2;
  block: 7x7 depthwise conv -> LayerNorm -> Dense 4C -> GELU (exact) -> GRN -> Dense C, residual;
  GRN(x) = gamma * x * n + beta + x, n = g / (mean over channels of g + 1e-6) with
           g = sqrt(sum over locations of x^2 + 1e-6) per sample and channel;
  head: LayerNorm of the location mean (the classifier after it is not needed for features and
        is left out, as in the release's feature model). LayerNorms: eps 1e-6.

Feature sets (release names, including its spelling 'convenxt'), from images in [-1, 1] mapped to
[0, 1], standardised with the ImageNet mean/std and resized (bilinear) to 224 x 224: after stage i
the map is standardised over channels per location, y = (x - mean_c) / (std_c + 1e-3); then
  convenxt_stage_{i} (i >= 1) every location of y [N, h*w, C]; convenxt_stage_{i}_mean and _std
  of y over locations [N, 1, C]; global_mean: the head LayerNorm of the last stage's (raw) location
  mean; global_std: std over locations of the last stage's y. Stds are sqrt(var + 1e-6), in at least float32.
"""
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mf_jax.models.release_features import at_least_f32, safe_std

Array = jax.Array
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BASE = dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024))  # facebook/convnextv2-base-22k-224


def _layer_norm(name):
  return nn.LayerNorm(epsilon=1e-6, use_fast_variance=False, name=name)


class GRN(nn.Module):
  """Global response normalisation over the spatial axes of [N, H, W, C]."""
  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    gamma = self.param("gamma", nn.initializers.zeros, (1, 1, 1, c))
    beta = self.param("beta", nn.initializers.zeros, (1, 1, 1, c))
    g = jnp.sqrt(jnp.sum(jnp.square(x), axis=(1, 2), keepdims=True) + 1e-6)
    n = g / (jnp.mean(g, axis=-1, keepdims=True) + 1e-6)
    return (gamma * (x * n) + beta + x).astype(x.dtype)


class Block(nn.Module):
  dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = nn.Conv(self.dim, (7, 7), padding="SAME", feature_group_count=self.dim, dtype=self.dtype,
                name="dwconv")(x)
    h = _layer_norm("norm")(h)
    h = nn.gelu(nn.Dense(4 * self.dim, dtype=self.dtype, name="pwconv1")(h), approximate=False)
    h = GRN(name="grn")(h)
    return x + nn.Dense(self.dim, dtype=self.dtype, name="pwconv2")(h)


def standardize(y: Array) -> Array:
  """Per location over channels: (y - mean) / (std + 1e-3), in at least float32."""
  y = at_least_f32(y)
  return (y - jnp.mean(y, -1, keepdims=True)) / (jnp.std(y, -1, keepdims=True) + 1e-3)


class ConvNeXtV2(nn.Module):
  depths: Sequence[int] = BASE["depths"]
  dims: Sequence[int] = BASE["dims"]
  dtype: Any = jnp.float32

  def stages(self, x: Array):
    """The four stage outputs of x [N, H, W, 3] (already normalised and resized)."""
    outs = []
    for i, (depth, dim) in enumerate(zip(self.depths, self.dims)):
      if i == 0:
        x = nn.Conv(dim, (4, 4), strides=4, padding="VALID", dtype=self.dtype, name="stem_conv")(x)
        x = _layer_norm("stem_norm")(x)
      else:
        x = _layer_norm(f"down{i}_norm")(x)
        x = nn.Conv(dim, (2, 2), strides=2, padding="VALID", dtype=self.dtype, name=f"down{i}_conv")(x)
      for j in range(depth):
        x = Block(dim, self.dtype, name=f"stage{i}_block{j}")(x)
      outs.append(x)
    return outs

  @nn.compact
  def __call__(self, x: Array, features: bool = True):
    """The feature sets of the docstring for x [N, H, W, 3]; features=False: the pooled vector."""
    x = jax.image.resize(x, (x.shape[0], 224, 224, x.shape[-1]), method="bilinear")
    outs = self.stages(x.astype(self.dtype))
    pooled = _layer_norm("head_norm")(jnp.mean(outs[-1], axis=(1, 2)))
    if not features:
      return pooled
    feats = {}
    for i, out in enumerate(outs):
      n, h, w, c = out.shape
      y = standardize(out).reshape(n, h * w, c)
      if i > 0:
        feats[f"convenxt_stage_{i}"] = y
      feats[f"convenxt_stage_{i}_mean"] = jnp.mean(y, axis=1, keepdims=True)
      feats[f"convenxt_stage_{i}_std"] = safe_std(y, 1)[:, None]
    feats["global_mean"] = at_least_f32(pooled)[:, None]
    feats["global_std"] = feats[f"convenxt_stage_{len(outs) - 1}_std"]
    return feats


def convnext_feature_fn(model: ConvNeXtV2, variables) -> Any:
  """x [N, H, W, 3] in [-1, 1] -> ConvNeXt feature sets {name: [N, L, C]} (frozen variables)."""
  mean, std = jnp.asarray(IMAGENET_MEAN), jnp.asarray(IMAGENET_STD)
  def feature_fn(x: Array) -> Mapping[str, Array]:
    pixels = ((at_least_f32(x) + 1.0) / 2.0 - mean) / std
    return model.apply(variables, pixels, features=True)
  return feature_fn


def example_input():
  return jnp.zeros((1, 224, 224, 3), jnp.float32)
