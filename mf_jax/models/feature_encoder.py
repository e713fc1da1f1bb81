"""A ResNet-style encoder pretrained as a masked autoencoder: drifting's feature space on latents.

Its stage maps become drifting feature sets in mf_jax/drifting_features.py (multi-scale
statistics; docs/drifting.md).

Pretraining: random p x p patches of the latent are replaced by a learned mask token and a light
decoder (every stage projected, upsampled to full resolution and summed) reconstructs them; the loss
is the MSE on masked positions only. Shapes are channels-last: latents [B, H, W, C].
"""
from typing import Any, Callable, Mapping, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def _groups(width: int, groups: int) -> int:
  """Largest group count <= groups that divides width."""
  return max(g for g in range(1, min(groups, width) + 1) if width % g == 0)


class ResBlock(nn.Module):
  """Pre-activation residual block; stride 2 halves the resolution."""
  width: int
  stride: int = 1
  groups: int = 32
  dtype: Any = jnp.float32  # Compute dtype; flax's GroupNorm takes its statistics in float32.

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype)
    h = nn.silu(nn.GroupNorm(_groups(x.shape[-1], self.groups), name="norm1", **kw)(x))
    h = nn.Conv(self.width, (3, 3), strides=self.stride, padding=1, name="conv1", **kw)(h)
    h = nn.silu(nn.GroupNorm(_groups(self.width, self.groups), name="norm2", **kw)(h))
    h = nn.Conv(self.width, (3, 3), padding=1, name="conv2", **kw)(h)
    if self.stride != 1 or x.shape[-1] != self.width:
      x = nn.Conv(self.width, (1, 1), strides=self.stride, name="skip", **kw)(x)
    return x + h


class ResNetEncoder(nn.Module):
  """Stem conv, then one stage per width (stages after the first downsample by 2).

  Returns the list of stage outputs [B, H / 2^s, W / 2^s, widths[s]].
  """
  widths: Sequence[int] = (128, 256, 512, 512)
  blocks_per_stage: int = 2
  groups: int = 32
  remat: bool = False  # Recompute each block's activations in the backward pass.
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = nn.Conv(self.widths[0], (3, 3), padding=1, name="stem", dtype=self.dtype)(x)
    block = nn.remat(ResBlock) if self.remat else ResBlock
    maps = []
    for s, width in enumerate(self.widths):
      for b in range(self.blocks_per_stage):
        h = block(width, 2 if (s > 0 and b == 0) else 1, self.groups, self.dtype,
                  name=f"stage{s}_block{b}")(h)
      maps.append(h)
    return maps


class MaskedAutoencoder(nn.Module):
  """Encoder plus a light all-stage decoder; `features` gives the encoder maps alone."""
  channels: int = 4  # Latent channels (SD-VAE: 4).
  widths: Sequence[int] = (128, 256, 512, 512)
  blocks_per_stage: int = 2
  groups: int = 32
  decoder_width: int = 256
  remat: bool = False
  dtype: Any = jnp.float32

  def setup(self):
    self.encoder = ResNetEncoder(self.widths, self.blocks_per_stage, self.groups, self.remat,
                                 self.dtype)
    self.mask_token = self.param("mask_token", nn.initializers.normal(0.02), (self.channels,))
    self.projections = [nn.Dense(self.decoder_width) for _ in self.widths]
    self.decoder_norm = nn.GroupNorm(_groups(self.decoder_width, self.groups))
    self.decoder_out = nn.Conv(self.channels, (3, 3), padding=1)

  def features(self, x: Array) -> Sequence[Array]:
    return self.encoder(x)

  def __call__(self, x: Array, mask: Array) -> Array:
    """Reconstruction [B, H, W, C] of x from its unmasked part; mask [B, H, W, 1] True = hidden."""
    if x.shape[-1] != self.channels:
      raise ValueError(f"MaskedAutoencoder has channels={self.channels}, got input {x.shape}.")
    maps = self.encoder(jnp.where(mask, self.mask_token, x))
    height = x.shape[1]
    h = 0.0
    for proj, fmap in zip(self.projections, maps):
      up = height // fmap.shape[1]
      h = h + jnp.repeat(jnp.repeat(proj(fmap), up, axis=1), up, axis=2)
    return self.decoder_out(nn.silu(self.decoder_norm(h)))


def random_patch_mask(key: Array, batch: int, height: int, width: int, patch: int,
                      ratio: float) -> Array:
  """[B, H, W, 1] bool with exactly round(ratio * patches) of the p x p patches hidden per sample."""
  if height % patch or width % patch:
    raise ValueError(f"mae patch_size={patch} must divide the latent size {height}x{width}.")
  gh, gw = height // patch, width // patch
  num_hidden = int(round(ratio * gh * gw))
  ranks = jnp.argsort(jax.random.uniform(key, (batch, gh * gw)), axis=1).argsort(axis=1)
  hidden = (ranks < num_hidden).reshape(batch, gh, gw)
  hidden = jnp.repeat(jnp.repeat(hidden, patch, axis=1), patch, axis=2)
  return hidden[..., None]


def mae_loss(apply_fn: Callable, params, x: Array, key: Array, mask_ratio: float = 0.75,
             patch_size: int = 2) -> Tuple[Array, Mapping[str, Array]]:
  """Masked-autoencoder loss: MSE on hidden positions. apply_fn(params, x, mask) -> recon."""
  if not 0.0 < mask_ratio < 1.0:
    raise ValueError(f"mae mask_ratio={mask_ratio}: must lie in (0, 1).")
  b, h, w, c = x.shape
  mask = random_patch_mask(key, b, h, w, patch_size, mask_ratio)
  err = jnp.square(apply_fn(params, x, mask).astype(jnp.float32) - x.astype(jnp.float32))
  hidden = mask.astype(jnp.float32)
  loss = jnp.sum(err * hidden) / (jnp.sum(hidden) * c)
  visible_mse = jnp.sum(err * (1 - hidden)) / (jnp.maximum(jnp.sum(1 - hidden), 1.0) * c)
  return loss, {"mae_loss": loss, "visible_mse": visible_mse}
