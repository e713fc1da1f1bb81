"""Networks built from a config, and the network functions objectives see.

Core layer: objectives and samplers import this module; it imports only models. Which network a
method trains is the method's choice (`Objective.build_model`); this module knows architectures by
`model.name` and the scalar conditions they embed, not methods.
"""
from typing import Sequence

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp

from mf_jax.models import convnext as convnext_lib
from mf_jax.models.dit import DiT
from mf_jax.models.dit_modern import ModernDiT
from mf_jax.models.feature_encoder import MaskedAutoencoder
from mf_jax.models.mae_resnet import MAEResNet
from mf_jax.models.mlp import MLP
from mf_jax.models.unet import SongUNet

# "float64" (parameters too; needs jax_enable_x64) exists for exactness tests, e.g. that a sharded
# step computes the same numbers as one device without float32 rounding in the way.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}
MODEL_NAMES = ("dit", "dit_modern", "mlp", "unet")


def _dtype(field: str, value: str):
  if value not in DTYPES:
    raise ValueError(f"{field}={value!r}: allowed values are {sorted(DTYPES)}.")
  return DTYPES[value]


def build_network(config, condition_names: Sequence[str]) -> nn.Module:
  """The generator `model.name` names, embedding the scalar conditions `condition_names` (e.g.
  MeanFlow's ("t", "t_minus_r"), Drifting's ("alpha",)) besides the class label."""
  m = config.model
  dtype = _dtype("model.compute_dtype", m.compute_dtype)
  param_dtype = jnp.float64 if m.compute_dtype == "float64" else jnp.float32
  conditions = tuple(condition_names)
  if m.name == "mlp":  # Small vector data (2-D toys, 8x8 digits); output flattened, see u_fn.
    d = config.data
    return MLP(out_dim=d.image_size * d.image_size * d.channels, hidden_widths=tuple(m.mlp_widths),
               condition_names=conditions, num_classes=d.num_classes, remat=m.remat, dtype=dtype)
  if m.name == "unet":
    return unet_model(config)
  if m.name == "dit_modern":  # The Drifting release's generator (SwiGLU, RoPE, RMSNorm, QK-norm).
    return ModernDiT(variant=m.variant, image_size=config.data.image_size,
                     channels=config.data.channels, num_classes=config.data.num_classes,
                     condition_names=conditions, depth=m.depth, hidden_size=m.hidden_size,
                     num_heads=m.num_heads, cls_tokens=m.cls_tokens, noise_classes=m.noise_classes,
                     noise_coords=m.noise_coords, remat=m.remat,
                     attn_fp32=m.attn_fp32, attention_impl=m.attention_impl, dtype=dtype,
                     param_dtype=param_dtype)
  if m.name != "dit":
    raise ValueError(f"model.name={m.name!r}: allowed values are {list(MODEL_NAMES)}.")
  return DiT(variant=m.variant, image_size=config.data.image_size, channels=config.data.channels,
             num_classes=config.data.num_classes, condition_names=conditions, depth=m.depth,
             hidden_size=m.hidden_size, num_heads=m.num_heads,
             attention_impl=m.attention_impl, matmul_precision=m.matmul_precision, remat=m.remat,
             dtype=dtype, param_dtype=param_dtype)


def unet_model(config) -> SongUNet:
  """The DDPM++ U-Net; it takes augmentation labels when config.augment.enabled."""
  from mf_jax import augment  # pylint: disable=g-import-not-at-top
  u, d = config.model.unet, config.data
  return SongUNet(image_size=d.image_size, channels=d.channels, model_channels=u.channels,
                  channel_mult=tuple(u.channel_mult), num_blocks=u.num_blocks,
                  attn_resolutions=tuple(u.attn_resolutions), dropout=u.dropout,
                  augment_dim=augment.LABEL_DIM if config.augment.enabled else 0)


def mae_model(config) -> nn.Module:
  """The feature encoder of config.mae: MaskedAutoencoder, or MAEResNet for arch='release'."""
  e = config.mae
  dtype = _dtype("mae.compute_dtype", e.compute_dtype)
  if e.arch == "release":
    return MAEResNet(channels=config.data.channels, widths=tuple(e.widths), layers=tuple(e.layers),
                     input_patch_size=e.input_patch_size,
                     num_classes=max(config.data.num_classes, 1), remat=e.remat, dtype=dtype)
  return MaskedAutoencoder(channels=config.data.channels, widths=tuple(e.widths),
                           blocks_per_stage=e.blocks_per_stage, groups=e.groups,
                           decoder_width=e.decoder_width, remat=e.remat, dtype=dtype)


def convnext_model(config) -> convnext_lib.ConvNeXtV2:
  """The frozen ConvNeXt-V2 of drifting.use_convnext (pixel drifting's second feature network)."""
  d = config.drifting
  dtype = _dtype("drifting.convnext_compute_dtype", d.convnext_compute_dtype)
  return convnext_lib.ConvNeXtV2(depths=tuple(d.convnext_depths), dims=tuple(d.convnext_dims),
                                 dtype=dtype)


def frozen_encoder_variables(variables, compute_dtype=jnp.float32):
  """MAE variables {"params": {...}} as the drifting state holds them: without the release MAE's
  pretraining heads, and with the encoder's kernels in the MAE's compute dtype.

  The drifting features come from the MAE's `encoder` submodule; MAEResNet's `decoder` and
  `classifier` only serve pretraining, so the drifting state does not carry them (2.2 GB per
  device for the release's MAE-640). MaskedAutoencoder's small decoder stays: its setup creates
  the mask token eagerly, so its variables are kept whole. Every convolution of the encoders casts
  its kernel to the compute dtype before use (Flax's promote_dtype), so storing the kernels in that
  dtype gives bit-identical features in half the memory with bfloat16 (MAE-640: 8.5 -> 4.3 GB per
  device); the norms' scales and biases are used in float32 and stay float32."""
  params = {k: v for k, v in variables["params"].items() if k not in ("decoder", "classifier")}
  if "encoder" in params:
    params["encoder"] = flax.traverse_util.path_aware_map(
        lambda path, a: a.astype(compute_dtype) if path[-1] == "kernel" else a, params["encoder"])
  return {"params": params}


def frozen_placeholder(init_fn, *args):
  """Zeros shaped like init_fn(*args), which is not run: a frozen network's values come from its
  file or workdir at step 0 (train.load_frozen_networks), so initialising it would only lengthen
  the init compile."""
  return jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype),
                                jax.eval_shape(init_fn, *args))


def example_image(config, batch_size: int = 1) -> jax.Array:
  d = config.data
  return jnp.zeros((batch_size, d.image_size, d.image_size, d.channels), jnp.float32)


def generator_fn(model: nn.Module, params):
  """A one-step generator conditioned on one scalar: (noise, s, labels) -> samples."""
  return lambda e, s, labels: model.apply(params, e, (s,), labels).reshape(e.shape)
