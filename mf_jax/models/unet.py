"""DDPM++ U-Net (Song et al.'s architecture, in EDM's "SongUNet" form) for pixel-space MeanFlow.

The MeanFlow CIFAR-10 network (py-meanflow): 32x32, 128 base channels, multipliers (2, 2, 2),
4 residual blocks per resolution, self-attention at 16x16 (and in the bottleneck), dropout 0.2,
resampling with the [1, 3, 3, 1] filter. Images are NHWC; times t and h = t - r each go through a
sinusoidal embedding (frequencies 10000^{-k/(n-1)}, times in [0, 1] unscaled) and are concatenated;
optional augmentation labels [B, augment_dim] (EDM augmentation) are mapped linearly and added.

Module names follow the reference layout ("enc.32x32_block0" -> "enc_32x32_block0") so the
converter (mf_jax/convert/cifar_unet_torch.py) is a renaming. Unconditional: class labels are
accepted for the common model signature and ignored.
"""
from typing import Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def _xavier(gain: float = 1.0):
  """Glorot-uniform times `gain` (the reference scales its init this way: 1, sqrt(0.2), 1e-5)."""
  return nn.initializers.variance_scaling(gain * gain, "fan_avg", "uniform")


class GroupNorm(nn.Module):
  """Group norm over (H, W, C / G) with the biased variance; G = min(32, C // 4)."""
  eps: float = 1e-6

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    groups = min(32, c // 4)
    if groups < 1 or c % groups:
      raise ValueError(f"GroupNorm: {c} channels cannot form min(32, C // 4) = {groups} groups; "
                       "use channel counts that are multiples of 4 (and of 32 above 128).")
    scale = self.param("scale", nn.initializers.ones, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    g = x.reshape(x.shape[:-1] + (groups, c // groups))
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = jnp.square(g - mean).mean(axis=(1, 2, 4), keepdims=True)
    g = (g - mean) * jax.lax.rsqrt(var + self.eps)
    return g.reshape(x.shape) * scale.astype(x.dtype) + bias.astype(x.dtype)


def _resample_kernel(taps: Sequence[int], channels: int, dtype):
  """Depthwise [k, k, 1, C] kernel: outer product of the 1-D filter, normalised to sum 1."""
  f = np.asarray(taps, np.float64)
  f = np.outer(f, f) / f.sum() ** 2
  return jnp.asarray(np.tile(f[:, :, None, None], (1, 1, 1, channels)), dtype)


def resample(x, taps: Sequence[int], up: bool):
  """2x up (transposed filter, gain 4) or 2x down (filter, stride 2), per channel, NHWC."""
  k = len(taps)
  pad = (k - 1) // 2
  kernel = _resample_kernel(taps, x.shape[-1], x.dtype)
  dims = ("NHWC", "HWIO", "NHWC")
  if up:  # A transposed convolution: dilate the input, pad by k - 1 - pad (the filter is symmetric).
    p = k - 1 - pad
    return jax.lax.conv_general_dilated(x, kernel * 4, (1, 1), ((p, p), (p, p)), lhs_dilation=(2, 2),
                                        dimension_numbers=dims, feature_group_count=x.shape[-1])
  return jax.lax.conv_general_dilated(x, kernel, (2, 2), ((pad, pad), (pad, pad)),
                                      dimension_numbers=dims, feature_group_count=x.shape[-1])


class Conv(nn.Module):
  """k x k convolution ('same' padding), optionally after 2x up/down resampling."""
  features: int
  kernel: int
  up: bool = False
  down: bool = False
  taps: Tuple[int, ...] = (1, 3, 3, 1)
  gain: float = 1.0

  @nn.compact
  def __call__(self, x):
    if self.up or self.down:
      x = resample(x, self.taps, up=self.up)
    k, p = self.kernel, self.kernel // 2
    kernel = self.param("kernel", _xavier(self.gain), (k, k, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    y = jax.lax.conv_general_dilated(x, kernel.astype(x.dtype), (1, 1), ((p, p), (p, p)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias.astype(x.dtype)


def _dense(features, gain=1.0, use_bias=True, name=None):
  return nn.Dense(features, use_bias=use_bias, kernel_init=_xavier(gain), name=name)


class UNetBlock(nn.Module):
  """Residual block (GroupNorm-SiLU-conv, additive embedding, dropout, conv), optional resampling
  and single-head self-attention; both residual sums are scaled by sqrt(1/2)."""
  out_channels: int
  up: bool = False
  down: bool = False
  attention: bool = False
  num_heads: int = 1
  dropout: float = 0.0
  taps: Tuple[int, ...] = (1, 3, 3, 1)

  @nn.compact
  def __call__(self, x, emb, train: bool):
    skip_scale = np.sqrt(0.5)
    c_in, c = x.shape[-1], self.out_channels
    orig = x
    x = Conv(c, 3, self.up, self.down, self.taps, name="conv0")(nn.silu(GroupNorm(name="norm0")(x)))
    x = x + _dense(c, name="affine")(emb)[:, None, None, :].astype(x.dtype)
    x = nn.silu(GroupNorm(name="norm1")(x))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = Conv(c, 3, gain=1e-5, name="conv1")(x)
    if c != c_in or self.up or self.down:
      orig = Conv(c, 1, self.up, self.down, self.taps, name="skip")(orig)
    x = (x + orig) * skip_scale
    if self.attention:
      b, h, w, _ = x.shape
      qkv = Conv(3 * c, 1, gain=np.sqrt(0.2), name="qkv")(GroupNorm(name="norm2")(x))
      q, k, v = jnp.split(qkv.reshape(b, h * w, 3 * c), 3, axis=-1)
      heads = lambda a: a.reshape(b, h * w, self.num_heads, c // self.num_heads)
      logits = jnp.einsum("bthc,bshc->bhts", heads(q), heads(k)) / np.sqrt(c // self.num_heads)
      weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(x.dtype)
      a = jnp.einsum("bhts,bshc->bthc", weights, heads(v)).reshape(b, h, w, c)
      x = (Conv(c, 1, gain=1e-5, name="proj")(a) + x) * skip_scale
    return x


def positional_embedding(x, channels: int):
  """[B] -> [B, channels]: (sin, cos) of x * 10000^{-k / (channels/2 - 1)}, k < channels / 2."""
  half = channels // 2
  freqs = (1.0 / 10000) ** (jnp.arange(half, dtype=x.dtype) / (half - 1))
  angles = x[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class SongUNet(nn.Module):
  """u(z, (t, t - r)) for images [B, H, W, C]; see the module docstring."""
  image_size: int = 32
  channels: int = 3
  model_channels: int = 128
  channel_mult: Tuple[int, ...] = (2, 2, 2)
  channel_mult_emb: int = 4
  channel_mult_noise: int = 2
  num_blocks: int = 4
  attn_resolutions: Tuple[int, ...] = (16,)
  dropout: float = 0.2
  augment_dim: int = 0
  taps: Tuple[int, ...] = (1, 3, 3, 1)

  @nn.compact
  def __call__(self, x, conditions, labels=None, augment_labels=None, train: bool = False):
    """x [B, H, W, C]; conditions = (t, h) each [B]; augment_labels [B, augment_dim] or None.

    `labels` is ignored (unconditional network). Dropout needs rngs={"dropout": key} when train.
    """
    del labels
    if len(conditions) != 2:
      raise ValueError(f"SongUNet takes the conditions (t, t - r); got {len(conditions)}.")
    noise_ch = self.model_channels * self.channel_mult_noise
    emb_ch = self.model_channels * self.channel_mult_emb
    emb = jnp.concatenate([positional_embedding(c.astype(x.dtype), noise_ch) for c in conditions],
                          axis=-1)
    if self.augment_dim:
      if augment_labels is None:  # Sampling: no augmentation, the same as all-zero labels.
        augment_labels = jnp.zeros((x.shape[0], self.augment_dim), x.dtype)
      emb = emb + _dense(2 * noise_ch, use_bias=False, name="map_augment")(augment_labels)
    emb = nn.silu(_dense(emb_ch, name="map_layer0")(emb))
    emb = nn.silu(_dense(emb_ch, name="map_layer1")(emb))

    block = lambda name, c, **kw: UNetBlock(c, dropout=self.dropout, taps=self.taps, name=name, **kw)
    skips = []
    c = self.model_channels
    for level, mult in enumerate(self.channel_mult):
      res = self.image_size >> level
      if level == 0:
        x = Conv(c, 3, name=f"enc_{res}x{res}_conv")(x)
      else:
        x = block(f"enc_{res}x{res}_down", c, down=True)(x, emb, train)
      skips.append(x)
      for i in range(self.num_blocks):
        c = self.model_channels * mult
        x = block(f"enc_{res}x{res}_block{i}", c, attention=res in self.attn_resolutions)(x, emb, train)
        skips.append(x)

    for level, mult in reversed(list(enumerate(self.channel_mult))):
      res = self.image_size >> level
      if level == len(self.channel_mult) - 1:
        x = block(f"dec_{res}x{res}_in0", c, attention=True)(x, emb, train)
        x = block(f"dec_{res}x{res}_in1", c)(x, emb, train)
      else:
        x = block(f"dec_{res}x{res}_up", c, up=True)(x, emb, train)
      for i in range(self.num_blocks + 1):
        c = self.model_channels * mult
        attn = i == self.num_blocks and res in self.attn_resolutions
        x = jnp.concatenate([x, skips.pop()], axis=-1)
        x = block(f"dec_{res}x{res}_block{i}", c, attention=attn)(x, emb, train)
    res = self.image_size
    x = GroupNorm(name=f"dec_{res}x{res}_aux_norm")(x)
    return Conv(self.channels, 3, gain=1e-5, name=f"dec_{res}x{res}_aux_conv")(nn.silu(x))
