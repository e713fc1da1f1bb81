"""LPIPS (Zhang et al. 2018, v0.1) on a VGG16 trunk, channels-last: the perceptual distance of pMF.

Input: two image batches [B, H, W, 3] in [-1, 1]. Each is mapped by the LPIPS scaling layer
  y = (x - shift) / scale, shift = (-0.030, -0.088, -0.188), scale = (0.458, 0.448, 0.450);
this is exactly ImageNet's standardisation of (x + 1) / 2 (shift = 2 mean - 1, scale = 2 std with
mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)), the form lpips-j uses; the two differ only
in float rounding. VGG16 (torchvision's `features`, 3x3 convs with bias, padding 1, ReLU, 2x2 max
pool between blocks) gives relu1_2, relu2_2, relu3_3, relu4_3, relu5_3. Each map is divided by its
channel norm at every location (+1e-10), the squared difference of the two images' maps goes
through the layer's 1x1 linear layer (C -> 1, no bias: the v0.1 weights), is averaged over
locations, and the five layers are summed: distance [B].

Parameter names: vgg/conv{block}_{layer}/{kernel, bias} (flaxmodels' VGG names), lin{i}/kernel
[1, 1, C_i, 1]. Weights: mf_jax/convert/formats/lpips_vgg16.py.
"""
from typing import Any, List, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
VGG16_DEPTHS = (2, 2, 3, 3, 3)  # 3x3 conv layers per block.
VGG16_WIDTHS = (64, 128, 256, 512, 512)
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
NORM_EPS = 1e-10


class VGG16Features(nn.Module):
  """The ReLU output of the last conv of every block ([N, H / 2^i, W / 2^i, C_i], i = 0..4)."""
  depths: Sequence[int] = VGG16_DEPTHS
  widths: Sequence[int] = VGG16_WIDTHS
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> List[Array]:
    outs = []
    for block, (depth, width) in enumerate(zip(self.depths, self.widths), start=1):
      if block > 1:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      for layer in range(1, depth + 1):
        x = nn.Conv(width, (3, 3), padding=1, dtype=self.dtype, name=f"conv{block}_{layer}")(x)
        # nn.relu (a select in its derivative), not jnp.maximum: at a location whose channels are
        # all zero the channel norm below has an infinite derivative, and the select keeps that
        # from reaching the input as NaN.
        x = nn.relu(x)
      outs.append(x)
    return outs


def unit_normalize(x: Array) -> Array:
  """x / (its norm over channels + 1e-10), per location."""
  return x / (jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True)) + NORM_EPS)


class LPIPS(nn.Module):
  """LPIPS distance of a [B, H, W, 3] and b [B, H, W, 3] (both in [-1, 1]) -> [B]."""
  depths: Sequence[int] = VGG16_DEPTHS
  widths: Sequence[int] = VGG16_WIDTHS
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, a: Array, b: Array) -> Array:
    shift, scale = jnp.asarray(LPIPS_SHIFT, a.dtype), jnp.asarray(LPIPS_SCALE, a.dtype)
    # Two calls of one trunk (shared parameters), not one call on the concatenated batches: under
    # a batch-sharded mesh, splitting a concatenation moves half of every feature map between
    # devices (84 collective permutes per step at B/16 on 8 devices).
    vgg = VGG16Features(self.depths, self.widths, self.dtype, name="vgg")
    feats_a, feats_b = vgg((a - shift) / scale), vgg((b - shift) / scale)
    total = jnp.zeros((a.shape[0],), jnp.result_type(a.dtype, jnp.float32))
    for i, (fa, fb) in enumerate(zip(feats_a, feats_b)):
      diff = jnp.square(unit_normalize(fa.astype(total.dtype)) -
                        unit_normalize(fb.astype(total.dtype)))
      weighted = nn.Conv(1, (1, 1), use_bias=False, dtype=self.dtype, name=f"lin{i}")(diff)
      total = total + jnp.mean(weighted.astype(total.dtype), axis=(1, 2, 3))
    return total


def example_inputs(size: int = 32):
  """(a, b) for model.init: parameter shapes do not depend on the image size (any size >= 16)."""
  x = jnp.zeros((1, size, size, 3), jnp.float32)
  return x, x
