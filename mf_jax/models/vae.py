"""Flax port of the Stable Diffusion VAE (diffusers `AutoencoderKL`), channels last.

Layout (diffusers names, mirrored one to one in the Flax parameter tree so that the converter in
`mf_jax/convert/formats/sd_vae.py` is a rename plus a transpose):
  encoder: conv_in -> down_blocks_i (resnets_j, downsamplers_0 except the last block) -> mid_block
           (resnets_0, attentions_0, resnets_1) -> conv_norm_out -> SiLU -> conv_out (2 * latent)
  quant_conv (1x1) -> moments = (mean, logvar); logvar clipped to [-30, 20]; std = exp(logvar / 2)
  post_quant_conv (1x1) -> decoder: conv_in -> mid_block -> up_blocks_i (layers_per_block + 1
           resnets, upsamplers_0 except the last block) -> conv_norm_out -> SiLU -> conv_out (3)

Shapes: images [B, H, W, 3] in [-1, 1]; latents [B, H / f, W / f, latent_channels] with
f = 2 ** (len(block_out_channels) - 1) (8 for the SD layout: 256 x 256 -> 32 x 32 x 4).

Scaling convention: this module never applies the scale factor. `encode_moments` returns the
posterior of the *unscaled* latent; the trainer multiplies a posterior sample by SCALE_FACTOR
(see `input_pipeline.latents.draw_latents`) and the sampler calls `decode_latents(params, z / scale)`.
"""
import dataclasses
import math
from typing import Any, Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# SD-VAE latent scale (diffusers config `scaling_factor`): unit-variance latents for the generator.
SCALE_FACTOR = 0.18215
LOGVAR_RANGE = (-30.0, 20.0)
EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  """The subset of the diffusers AutoencoderKL config that determines the architecture."""
  block_out_channels: Tuple[int, ...] = (128, 256, 512, 512)
  layers_per_block: int = 2
  latent_channels: int = 4
  norm_num_groups: int = 32
  in_channels: int = 3
  out_channels: int = 3
  mid_block_add_attention: bool = True
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True

  def __post_init__(self):
    for c in self.block_out_channels:
      if c % self.norm_num_groups:
        raise ValueError(f"VAEConfig: block_out_channels {self.block_out_channels} must all be "
                         f"divisible by norm_num_groups={self.norm_num_groups}.")

  @property
  def downsample_factor(self) -> int:
    return 2 ** (len(self.block_out_channels) - 1)


# Named layouts. "sd" is stabilityai/sd-vae-ft-mse / ft-ema; "tiny" exists for fast tests only.
LAYOUTS: Dict[str, VAEConfig] = {
    "sd": VAEConfig(),
    "tiny": VAEConfig(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4),
}


def config_from_diffusers(cfg: Dict[str, Any]) -> VAEConfig:
  """VAEConfig from a diffusers config.json dict; rejects block types this port does not have."""
  for key, allowed in (("down_block_types", "DownEncoderBlock2D"),
                       ("up_block_types", "UpDecoderBlock2D")):
    bad = [b for b in cfg.get(key, []) if b != allowed]
    if bad:
      raise ValueError(f"VAE config {key}={cfg[key]}: only {allowed} is ported.")
  if cfg.get("act_fn", "silu") != "silu":
    raise ValueError(f"VAE config act_fn={cfg['act_fn']!r}: only 'silu' is ported.")
  fields = {f.name for f in dataclasses.fields(VAEConfig)}
  kw = {k: v for k, v in cfg.items() if k in fields}
  if "block_out_channels" in kw:
    kw["block_out_channels"] = tuple(kw["block_out_channels"])
  # Older configs lack these flags; diffusers treats a missing flag as True.
  for k in ("use_quant_conv", "use_post_quant_conv", "mid_block_add_attention"):
    if kw.get(k) is None:
      kw[k] = True
  return VAEConfig(**kw)


def _group_norm(groups: int, name: str) -> nn.GroupNorm:
  # Two-pass variance: the one-pass E[x^2] - E[x]^2 costs parity with PyTorch at 1e-4.
  return nn.GroupNorm(num_groups=groups, epsilon=EPS, use_fast_variance=False, name=name)


def _conv(features: int, kernel: int, name: str, stride: int = 1, padding=None) -> nn.Conv:
  pad = kernel // 2 if padding is None else padding
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=pad if not isinstance(pad, int) else ((pad, pad), (pad, pad)), name=name)


class ResnetBlock(nn.Module):
  """GroupNorm-SiLU-conv twice plus a (1x1 conv when widths differ) shortcut."""
  out_channels: int
  groups: int

  @nn.compact
  def __call__(self, x):
    h = _conv(self.out_channels, 3, "conv1")(nn.silu(_group_norm(self.groups, "norm1")(x)))
    h = _conv(self.out_channels, 3, "conv2")(nn.silu(_group_norm(self.groups, "norm2")(h)))
    if x.shape[-1] != self.out_channels:
      x = _conv(self.out_channels, 1, "conv_shortcut")(x)
    return x + h


class SpatialAttention(nn.Module):
  """Single-head self-attention over all H*W positions with a residual connection."""
  groups: int

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    y = _group_norm(self.groups, "group_norm")(x).reshape(b, h * w, c)
    q, k, v = (nn.Dense(c, name=n)(y) for n in ("to_q", "to_k", "to_v"))
    # diffusers upcasts the softmax; keep the logits in float32 whatever the activation dtype.
    logits = jnp.einsum("bqc,bkc->bqk", q, k).astype(jnp.float32) / math.sqrt(c)
    out = jnp.einsum("bqk,bkc->bqc", jax.nn.softmax(logits, axis=-1).astype(v.dtype), v)
    return x + nn.Dense(c, name="to_out_0")(out).reshape(b, h, w, c)


class MidBlock(nn.Module):
  channels: int
  groups: int
  add_attention: bool = True

  @nn.compact
  def __call__(self, x):
    x = ResnetBlock(self.channels, self.groups, name="resnets_0")(x)
    if self.add_attention:
      x = SpatialAttention(self.groups, name="attentions_0")(x)
    return ResnetBlock(self.channels, self.groups, name="resnets_1")(x)


class Downsample(nn.Module):
  """Stride-2 3x3 conv after padding one row/column at the bottom/right only (diffusers padding=0)."""
  channels: int

  @nn.compact
  def __call__(self, x):
    return _conv(self.channels, 3, "conv", stride=2, padding=((0, 1), (0, 1)))(x)


class Upsample(nn.Module):
  """Nearest-neighbour 2x then a 3x3 conv."""
  channels: int

  @nn.compact
  def __call__(self, x):
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return _conv(self.channels, 3, "conv")(x)


class _Blocks(nn.Module):
  """One down_blocks_i / up_blocks_i: a run of resnets, then the optional resampler."""
  channels: int
  num_layers: int
  groups: int
  resample: str  # "down", "up" or ""

  @nn.compact
  def __call__(self, x):
    for j in range(self.num_layers):
      x = ResnetBlock(self.channels, self.groups, name=f"resnets_{j}")(x)
    if self.resample == "down":
      x = Downsample(self.channels, name="downsamplers_0")(x)
    elif self.resample == "up":
      x = Upsample(self.channels, name="upsamplers_0")(x)
    return x


class Encoder(nn.Module):
  config: VAEConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    chans = cfg.block_out_channels
    x = _conv(chans[0], 3, "conv_in")(x)
    for i, c in enumerate(chans):
      last = i == len(chans) - 1
      x = _Blocks(c, cfg.layers_per_block, cfg.norm_num_groups, "" if last else "down",
                  name=f"down_blocks_{i}")(x)
    x = MidBlock(chans[-1], cfg.norm_num_groups, cfg.mid_block_add_attention, name="mid_block")(x)
    x = nn.silu(_group_norm(cfg.norm_num_groups, "conv_norm_out")(x))
    return _conv(2 * cfg.latent_channels, 3, "conv_out")(x)


class Decoder(nn.Module):
  config: VAEConfig

  @nn.compact
  def __call__(self, z):
    cfg = self.config
    chans = tuple(reversed(cfg.block_out_channels))
    x = _conv(chans[0], 3, "conv_in")(z)
    x = MidBlock(chans[0], cfg.norm_num_groups, cfg.mid_block_add_attention, name="mid_block")(x)
    for i, c in enumerate(chans):
      last = i == len(chans) - 1
      x = _Blocks(c, cfg.layers_per_block + 1, cfg.norm_num_groups, "" if last else "up",
                  name=f"up_blocks_{i}")(x)
    x = nn.silu(_group_norm(cfg.norm_num_groups, "conv_norm_out")(x))
    return _conv(cfg.out_channels, 3, "conv_out")(x)


class AutoencoderKL(nn.Module):
  """`__call__` runs encode (posterior mean) then decode, used only to create all parameters."""
  config: VAEConfig

  def setup(self):
    cfg = self.config
    self.encoder = Encoder(cfg)
    self.decoder = Decoder(cfg)
    if cfg.use_quant_conv:
      self.quant_conv = nn.Conv(2 * cfg.latent_channels, (1, 1))
    if cfg.use_post_quant_conv:
      self.post_quant_conv = nn.Conv(cfg.latent_channels, (1, 1))

  def encode(self, x):
    """[B, H, W, 3] in [-1, 1] -> (mean, std), each [B, H/f, W/f, latent]."""
    h = self.encoder(x)
    if self.config.use_quant_conv:
      h = self.quant_conv(h)
    mean, logvar = jnp.split(h, 2, axis=-1)
    return mean, jnp.exp(0.5 * jnp.clip(logvar, *LOGVAR_RANGE))

  def decode(self, z):
    """Unscaled latent [B, h, w, latent] -> image [B, h*f, w*f, 3], nominally in [-1, 1]."""
    if self.config.use_post_quant_conv:
      z = self.post_quant_conv(z)
    return self.decoder(z)

  def __call__(self, x):
    return self.decode(self.encode(x)[0])


def random_params(config: VAEConfig, seed: int = 0):
  """Random parameters drawn in numpy (tests and the test-only path of prepare_imagenet).

  Kernels ~ N(0, 1/fan_in), biases ~ N(0, 0.02), norm scales ~ 1 + N(0, 0.05). numpy instead of
  `Module.init` because compiling the init's many RNG ops takes tens of seconds on a busy CPU.
  """
  rng = np.random.RandomState(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      v = rng.normal(0.0, 1.0 / np.sqrt(fan_in), leaf.shape)
    elif name == "scale":
      v = 1.0 + 0.05 * rng.normal(size=leaf.shape)
    else:
      v = 0.02 * rng.normal(size=leaf.shape)
    return jnp.asarray(v, jnp.float32)
  return jax.tree_util.tree_map_with_path(draw, param_shapes(config))


def param_shapes(config: VAEConfig):
  """Parameter tree of jax.ShapeDtypeStruct without allocating (what the converter must fill)."""
  x = jax.ShapeDtypeStruct((1, 2 * config.downsample_factor, 2 * config.downsample_factor,
                            config.in_channels), jnp.float32)
  return jax.eval_shape(lambda k, x: AutoencoderKL(config).init(k, x)["params"],
                        jax.random.key(0), x)


def encode_moments(config: VAEConfig, params, images: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """Posterior (mean, std) of the unscaled latent. images [B, H, W, 3] float in [-1, 1]."""
  return AutoencoderKL(config).apply({"params": params}, images, method="encode")


def decode_latents(config: VAEConfig, params, z: jax.Array) -> jax.Array:
  """Image [B, H, W, 3] (about [-1, 1]; clip before uint8) from an UNSCALED latent.

  Callers that hold model-space latents pass z / SCALE_FACTOR.
  """
  return AutoencoderKL(config).apply({"params": params}, z, method="decode")
