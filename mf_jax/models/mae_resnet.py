"""The Drifting Models release's feature encoder: a ResNet pretrained as a masked autoencoder.

Architecture (as released, github.com/lambertae/drifting at accd0cf0; MAE-256 and MAE-640 differ
only in the first width): the input [B, H, W, C] is first folded into non-overlapping p x p pixel
patches (`input_patch_size` p: 1 for latents, 8 for 256x256 pixels) giving [B, H/p, W/p, p*p*C]
with channels ordered (row in patch, column in patch, channel). Then
  stem:   3x3 conv (no bias) -> GroupNorm -> ReLU, width widths[0], stride 1;
  stages: stage s has layers[s] basic blocks of width widths[s]; the first block of stages 1-3
          has stride 2. A basic block is conv3x3 -> GN -> ReLU -> conv3x3 -> GN, added to the input
          (through a 1x1 conv + GN where the shape changes), then ReLU. After its blocks each stage
          output passes one more GroupNorm, and that normalised map feeds the next stage;
  decoder (pretraining only): a U-Net over the stem and the four stage maps: conv-GN-ReLU bridge on
          the last map, then four up blocks (bilinear resize to the skip's size, concat, GN,
          two conv-GN-ReLU), then a 1x1 conv to p*p*C channels;
  fc:     a linear classifier on the mean of the last map (the release fine-tunes with it).
GroupNorm uses the largest group count <= 32 that divides the width. Convolutions have no bias
except the decoder's output conv. Widths follow (w, 2w, 4w, 8w) in the release (w = 256 or 640).

Pretraining: random patch_size x patch_size cells of the folded input are zeroed, each with
probability mask_ratio; the loss is the squared error summed over channels, averaged over the
hidden cells. The features for the drifting loss are in mf_jax/models/release_features.py.
"""
from typing import Any, Mapping, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def gn_groups(width: int, max_groups: int = 32) -> int:
  """Largest group count <= max_groups that divides width."""
  return max(g for g in range(1, min(max_groups, width) + 1) if width % g == 0)


def fold_patches(x: Array, p: int) -> Array:
  """[B, H, W, C] -> [B, H/p, W/p, p*p*C], channels ordered (row in patch, column, channel)."""
  if p == 1:
    return x
  b, h, w, c = x.shape
  x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // p, w // p, p * p * c)


def _norm(width: int, dtype, name: str) -> nn.GroupNorm:
  return nn.GroupNorm(num_groups=gn_groups(width), dtype=dtype, name=name)


def _conv(width: int, kernel: int, dtype, name: str, stride: int = 1, bias: bool = False):
  return nn.Conv(width, (kernel, kernel), strides=stride, padding=kernel // 2, use_bias=bias,
                 dtype=dtype, name=name)


class BasicBlock(nn.Module):
  """Two 3x3 conv-GN layers with a residual connection; stride 2 halves the resolution."""
  width: int
  stride: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    y = nn.relu(_norm(self.width, self.dtype, "norm1")(
        _conv(self.width, 3, self.dtype, "conv1", self.stride)(x)))
    y = _norm(self.width, self.dtype, "norm2")(_conv(self.width, 3, self.dtype, "conv2")(y))
    if x.shape != y.shape:
      x = _norm(self.width, self.dtype, "skip_norm")(
          _conv(self.width, 1, self.dtype, "skip_conv", self.stride)(x))
    return nn.relu(x + y)


class Encoder(nn.Module):
  """Stem and four stages. Returns (stem [B,h,w,w0], stage maps (normalised), block outputs)."""
  widths: Sequence[int]
  layers: Sequence[int]
  remat: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array):
    h = nn.relu(_norm(self.widths[0], self.dtype, "stem_norm")(
        _conv(self.widths[0], 3, self.dtype, "stem_conv")(x)))
    stem, stages, blocks = h, [], []
    block_cls = nn.remat(BasicBlock) if self.remat else BasicBlock
    for s, (width, count) in enumerate(zip(self.widths, self.layers)):
      outs = []
      for b in range(count):
        h = block_cls(width, 2 if s > 0 and b == 0 else 1, self.dtype, name=f"stage{s}_block{b}")(h)
        outs.append(h)
      h = _norm(width, self.dtype, f"stage{s}_norm")(h)
      stages.append(h)
      blocks.append(outs)
    return stem, stages, blocks


class ConvNormReLU(nn.Module):
  width: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    return nn.relu(_norm(self.width, self.dtype, "norm")(_conv(self.width, 3, self.dtype, "conv")(x)))


class UpBlock(nn.Module):
  """Bilinear upsampling to the skip map's size, concatenation, GN, two conv-GN-ReLU."""
  width: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, skip):
    x = jax.image.resize(x, skip.shape[:3] + x.shape[3:], method="bilinear")
    x = jnp.concatenate([x, skip], axis=-1)
    x = _norm(x.shape[-1], self.dtype, "concat_norm")(x)
    x = ConvNormReLU(self.width, self.dtype, name="proj")(x)
    return ConvNormReLU(self.width, self.dtype, name="refine")(x)


class Decoder(nn.Module):
  """U-Net decoder from (stem, stage maps) to out_channels at the stem's resolution."""
  widths: Sequence[int]
  out_channels: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, stem, stages):
    w = self.widths
    h = ConvNormReLU(w[3], self.dtype, name="bridge")(stages[3])
    h = UpBlock(w[2], self.dtype, name="up3")(h, stages[2])
    h = UpBlock(w[1], self.dtype, name="up2")(h, stages[1])
    h = UpBlock(w[0], self.dtype, name="up1")(h, stages[0])
    h = UpBlock(w[0], self.dtype, name="up0")(h, stem)
    return _conv(self.out_channels, 1, self.dtype, "head", bias=True)(h)


class MAEResNet(nn.Module):
  """Encoder, decoder and classifier; `activations` gives what the drifting features need."""
  channels: int = 4
  widths: Sequence[int] = (256, 512, 1024, 2048)
  layers: Sequence[int] = (3, 4, 6, 3)
  input_patch_size: int = 1
  num_classes: int = 1000
  remat: bool = False
  dtype: Any = jnp.float32

  def setup(self):
    if len(self.widths) != 4 or len(self.layers) != 4:
      raise ValueError(f"mae.widths={tuple(self.widths)} and mae.layers={tuple(self.layers)} need "
                       "4 entries each for mae.arch='release'.")
    self.encoder = Encoder(tuple(self.widths), tuple(self.layers), self.remat, self.dtype)
    p = self.input_patch_size
    self.decoder = Decoder(tuple(self.widths), self.channels * p * p, self.dtype)
    self.classifier = nn.Dense(self.num_classes, dtype=self.dtype)

  def __call__(self, x: Array, mask: Array) -> Mapping[str, Array]:
    """x [B, H, W, C]; mask [B, H, W, 1] (True or 1 = hidden), constant on each p x p patch.

    Returns {"recon": [B, H/p, W/p, p*p*C] in folded space, "logits": [B, num_classes]}.
    """
    p = self.input_patch_size
    xp = fold_patches(x.astype(self.dtype), p)
    hidden = mask[:, ::p, ::p].astype(xp.dtype)
    stem, stages, _ = self.encoder(xp * (1.0 - hidden))
    logits = self.classifier(jnp.mean(stages[3], axis=(1, 2)))
    return {"recon": self.decoder(stem, stages), "logits": logits}

  def activations(self, x: Array) -> Mapping[str, Any]:
    """Unmasked encoder pass: {"input": folded x, "stem", "stages": [4 maps], "blocks": [[...]]}."""
    xp = fold_patches(x.astype(self.dtype), self.input_patch_size)
    stem, stages, blocks = self.encoder(xp)
    return {"input": xp, "stem": stem, "stages": stages, "blocks": blocks}


def patch_mask(key: Array, batch: int, height: int, width: int, patch: int, ratio: float,
               input_patch_size: int = 1) -> Array:
  """[B, H, W, 1] bool: each patch x patch cell of the folded grid hidden with probability ratio.

  A cell covers patch * input_patch_size pixels per side of the input (the release's masking: an
  independent draw per cell, so the hidden fraction varies around ratio from sample to sample).
  """
  cell = patch * input_patch_size
  if height % cell or width % cell:
    raise ValueError(f"mae.patch_size={patch} x mae.input_patch_size={input_patch_size} must "
                     f"divide the input size {height}x{width}.")
  hidden = jax.random.uniform(key, (batch, height // cell, width // cell)) < ratio
  hidden = jnp.repeat(jnp.repeat(hidden, cell, axis=1), cell, axis=2)
  return hidden[..., None]


def mae_loss(model: MAEResNet, params, x: Array, key: Array, mask_ratio: float = 0.5,
             patch_size: int = 2) -> Tuple[Array, Mapping[str, Array]]:
  """The release's reconstruction loss: per sample, the squared error of the folded input summed
  over channels and averaged over hidden cells of the folded grid; then the batch mean."""
  if not 0.0 < mask_ratio < 1.0:
    raise ValueError(f"mae mask_ratio={mask_ratio}: must lie in (0, 1).")
  b, h, w, _ = x.shape
  p = model.input_patch_size
  mask = patch_mask(key, b, h, w, patch_size, mask_ratio, p)
  recon = model.apply(params, x, mask)["recon"].astype(jnp.float32)
  target = fold_patches(x.astype(jnp.float32), p)
  hidden = mask[:, ::p, ::p].astype(jnp.float32)
  err = jnp.sum(jnp.square(recon - target), axis=-1, keepdims=True)
  per_sample = jnp.sum(err * hidden, axis=(1, 2, 3)) / (jnp.sum(hidden, axis=(1, 2, 3)) + 1e-8)
  visible = jnp.sum(err * (1 - hidden)) / jnp.maximum(jnp.sum(1 - hidden), 1.0)
  loss = jnp.mean(per_sample)
  return loss, {"mae_loss": loss, "visible_mse": visible, "mask_ratio": jnp.mean(hidden)}


def param_count(model: MAEResNet, image_size: int) -> int:
  """Parameter count from shapes only (jax.eval_shape; nothing allocated)."""
  x = jax.ShapeDtypeStruct((1, image_size, image_size, model.channels), jnp.float32)
  m = jax.ShapeDtypeStruct((1, image_size, image_size, 1), jnp.bool_)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x, m)
  return sum(int(a.size) for a in jax.tree_util.tree_leaves(shapes))
