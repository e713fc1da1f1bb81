"""Training state: parameters, optimizer, EMA copies, and the network function built from a config.

Parameters are plain pytrees kept in float32; `model.compute_dtype = "bfloat16"` runs the matmuls in
bf16. The state is created directly in its sharded layout (jit with out_shardings), so no host ever
holds a full copy of a large model.
"""
from typing import Any, Tuple

import flax.linen as nn
import flax.struct
import flax.traverse_util
import jax
import jax.numpy as jnp
import optax

from mf_jax import class_queues, meanflow
from mf_jax import sharding as sharding_lib
from mf_jax.models.dit import DiT
from mf_jax.models import convnext as convnext_lib
from mf_jax.models.dit_modern import ModernDiT
from mf_jax.models.feature_encoder import MaskedAutoencoder
from mf_jax.models.mae_resnet import MAEResNet
from mf_jax.models.mlp import MLP
from mf_jax.models.unet import SongUNet

# "float64" (parameters too; needs jax_enable_x64) exists for exactness tests, e.g. that a sharded
# step computes the same numbers as one device without float32 rounding in the way.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: number of updates applied.
  params: Any
  opt_state: Any
  ema_params: Tuple[Any, ...]  # One copy per entry of config.ema_decays.
  # First step (1-based) whose loss or gradient was not finite (-1: none). Once set, updates stop, so the
  # parameters and any checkpoint keep the last good values; the host raises at its next check.
  nonfinite_step: jax.Array
  # Method-specific state carried between steps. Drifting: {"queues": per-class real samples,
  # "uncond_queue": recent real samples of any class (guidance negatives) or None,
  # "encoder": frozen feature-encoder parameters or None, and with
  # drifting.use_convnext "convnext": frozen ConvNeXt-V2 variables}.
  aux: Any = None


def build_model(config) -> nn.Module:
  m = config.model
  if m.compute_dtype not in DTYPES:
    raise ValueError(f"model.compute_dtype={m.compute_dtype!r}: allowed values are {sorted(DTYPES)}.")
  if config.method == "mae":  # Feature encoder for drifting, pretrained as a masked autoencoder.
    return mae_model(config)
  conditions = condition_names(config)
  if m.name == "mlp":  # Small vector data (2-D toys, 8x8 digits); output flattened, see net_fn.
    d = config.data
    return MLP(out_dim=d.image_size * d.image_size * d.channels, hidden_widths=tuple(m.mlp_widths),
               condition_names=conditions, num_classes=d.num_classes, remat=m.remat,
               dtype=DTYPES[m.compute_dtype])
  if m.name == "unet":
    return unet_model(config)
  if m.name == "dit_modern":  # The Drifting release's generator (SwiGLU, RoPE, RMSNorm, QK-norm).
    return ModernDiT(variant=m.variant, image_size=config.data.image_size,
                     channels=config.data.channels, num_classes=config.data.num_classes,
                     condition_names=conditions, depth=m.depth, hidden_size=m.hidden_size,
                     num_heads=m.num_heads, cls_tokens=m.cls_tokens, noise_classes=m.noise_classes,
                     noise_coords=m.noise_coords, remat=m.remat,
                     attn_fp32=m.get("attn_fp32", True), attention_impl=m.attention_impl,
                     dtype=DTYPES[m.compute_dtype],
                     param_dtype=jnp.float64 if m.compute_dtype == "float64" else jnp.float32)
  if m.name != "dit":
    raise ValueError(f"model.name={m.name!r}: allowed values are ['dit', 'dit_modern', 'mlp', "
                     "'unet'].")
  return DiT(variant=m.variant, image_size=config.data.image_size, channels=config.data.channels,
             num_classes=config.data.num_classes, condition_names=conditions, depth=m.depth,
             hidden_size=m.hidden_size, num_heads=m.num_heads,
             attention_impl=m.attention_impl, matmul_precision=m.get("matmul_precision", "default"),
             remat=m.remat, dtype=DTYPES[m.compute_dtype],
             param_dtype=jnp.float64 if m.compute_dtype == "float64" else jnp.float32)


def condition_names(config) -> Tuple[str, ...]:
  """The scalar conditions the network takes: ("alpha",) for drifting, else the MeanFlow times
  meanflow.time_conditioning names (default ("t", "t_minus_r"); others are Table 1c ablations)."""
  if config.method == "drifting":
    return ("alpha",)
  return meanflow.TIME_CONDITIONINGS[config.meanflow.get("time_conditioning", "t,t-r")]


def unet_model(config) -> SongUNet:
  """The DDPM++ U-Net; it takes augmentation labels when config.augment.enabled."""
  from mf_jax import augment  # pylint: disable=g-import-not-at-top
  u, d = config.model.unet, config.data
  return SongUNet(image_size=d.image_size, channels=d.channels, model_channels=u.channels,
                  channel_mult=tuple(u.channel_mult), num_blocks=u.num_blocks,
                  attn_resolutions=tuple(u.attn_resolutions), dropout=u.dropout,
                  augment_dim=augment.LABEL_DIM if config.augment.enabled else 0)


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


def mae_model(config) -> nn.Module:
  """The feature encoder of config.mae: MaskedAutoencoder, or MAEResNet for arch='release'."""
  e = config.mae
  if e.compute_dtype not in DTYPES:
    raise ValueError(f"mae.compute_dtype={e.compute_dtype!r}: allowed values are {sorted(DTYPES)}.")
  if e.get("arch", "resnet") == "release":
    return MAEResNet(channels=config.data.channels, widths=tuple(e.widths), layers=tuple(e.layers),
                     input_patch_size=e.input_patch_size,
                     num_classes=max(config.data.num_classes, 1), remat=e.remat,
                     dtype=DTYPES[e.compute_dtype])
  return MaskedAutoencoder(channels=config.data.channels, widths=tuple(e.widths),
                           blocks_per_stage=e.blocks_per_stage, groups=e.groups,
                           decoder_width=e.decoder_width, remat=e.remat,
                           dtype=DTYPES[e.compute_dtype])


def convnext_model(config) -> convnext_lib.ConvNeXtV2:
  """The frozen ConvNeXt-V2 of drifting.use_convnext (pixel drifting's second feature network)."""
  d = config.drifting
  if d.convnext_compute_dtype not in DTYPES:
    raise ValueError(f"drifting.convnext_compute_dtype={d.convnext_compute_dtype!r}: allowed values "
                     f"are {sorted(DTYPES)}.")
  return convnext_lib.ConvNeXtV2(depths=tuple(d.convnext_depths), dims=tuple(d.convnext_dims),
                    dtype=DTYPES[d.convnext_compute_dtype])


def meanflow_u_fn(model: nn.Module, params, augment_labels=None, dropout_key=None):
  """The network as the objective sees it: u(z, r, t, labels), conditioned on (t, t - r).

  The model's `condition_names` (set by meanflow.time_conditioning) say which scalars it takes and
  in which order: ("t", "t_minus_r") -> (t, t - r). A model without them (the U-Net) takes (t, t - r).

  Training a U-Net may add augmentation labels [B, 6] and a dropout key. With augment_labels the
  (unconditional) network's `labels` argument carries each sample's row index into augment_labels,
  so the labels follow the samples however the objective splits or reorders the batch.
  """
  names = tuple(getattr(model, "condition_names", ("t", "t_minus_r")))
  if augment_labels is None and dropout_key is None:
    return lambda z, r, t, labels: model.apply(
        params, z, meanflow.time_conditions(names, r, t), labels).reshape(z.shape)
  def u_fn(z, r, t, labels):
    kw = dict(train=dropout_key is not None)
    if augment_labels is not None:
      kw["augment_labels"] = augment_labels[labels]
    if dropout_key is not None:
      kw["rngs"] = {"dropout": dropout_key}
    return model.apply(params, z, meanflow.time_conditions(names, r, t), labels,
                       **kw).reshape(z.shape)
  return u_fn


def generator_fn(model: nn.Module, params):
  """A drifting generator as the objective sees it: (noise, alpha, labels) -> samples."""
  return lambda e, alpha, labels: model.apply(params, e, (alpha,), labels).reshape(e.shape)


def make_optimizer(config) -> optax.GradientTransformation:
  o = config.optim
  if o.schedule == "constant":
    schedule = optax.constant_schedule(o.learning_rate)
  elif o.schedule == "cosine":
    schedule = optax.cosine_decay_schedule(o.learning_rate, max(1, config.train.num_steps - o.warmup_steps))
  else:
    raise ValueError(f"optim.schedule={o.schedule!r}: allowed values are ['constant', 'cosine'].")
  warmup = warmup_steps(config)
  if warmup:
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, o.learning_rate, warmup), schedule], [warmup])
  chain = [optax.clip_by_global_norm(o.grad_clip)] if o.grad_clip > 0 else []
  if o.get("name", "adamw") == "adam":
    chain.append(optax.adam(schedule, b1=o.b1, b2=o.b2))
  else:
    chain.append(optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay))
  return optax.chain(*chain)


def warmup_steps(config) -> int:
  """optim.warmup_steps, or optim.warmup_epochs epochs of data.num_train_examples when set."""
  o = config.optim
  if o.get("warmup_epochs", 0.0):
    per_epoch = config.data.num_train_examples / config.train.global_batch_size
    return int(round(o.warmup_epochs * per_epoch))
  return o.warmup_steps


def example_inputs(config, batch_size: int = 1):
  """Dummy (x, conditions, labels) with the shapes the model is called with."""
  d = config.data
  x = jnp.zeros((batch_size, d.image_size, d.image_size, d.channels), jnp.float32)
  if config.method == "mae":
    return x, jnp.zeros(x.shape[:-1] + (1,), bool)
  conditions = tuple(jnp.zeros((batch_size,), jnp.float32) for _ in condition_names(config))
  return x, conditions, jnp.zeros((batch_size,), jnp.int32)


def frozen_placeholder(init_fn, *args):
  """Zeros shaped like init_fn(*args), which is not run: the frozen encoders' values come from
  their files at step 0 (train.py), so initialising them would only lengthen the init compile."""
  return jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype),
                                jax.eval_shape(init_fn, *args))


def init_state(config, model, optimizer, key) -> TrainState:
  params = model.init(key, *example_inputs(config))
  aux = None
  if config.method == "drifting":
    d = config.data
    encoder = None
    if config.drifting.feature_encoder_workdir:  # A placeholder of the right shapes; see train.py.
      mae = config.copy_and_resolve_references()
      mae.method = "mae"
      encoder = frozen_encoder_variables(
          frozen_placeholder(mae_model(mae).init, key, *example_inputs(mae)),
          DTYPES[mae.mae.compute_dtype])
    shape = (d.image_size, d.image_size, d.channels)
    bank = class_queues.STORAGE_DTYPES[config.drifting.bank_dtype]
    aux = {"queues": class_queues.init(max(d.num_classes, 1), config.drifting.queue_len, shape,
                                       bank),
           "uncond_queue": (class_queues.init(1, config.drifting.uncond_queue_len, shape, bank)
                            if uses_uncond_queue(config) else None),
           "encoder": encoder}
    if config.drifting.get("use_convnext", False):  # A placeholder too; see train.py.
      aux["convnext"] = frozen_placeholder(convnext_model(config).init, key,
                                           convnext_lib.example_input())
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                    ema_params=tuple(params for _ in config.ema_decays),
                    nonfinite_step=jnp.full((), -1, jnp.int32), aux=aux)


def uses_uncond_queue(config) -> bool:
  """Drifting guidance negatives come from the unconditional queue (else: other classes of the step)."""
  return config.drifting.num_unc > 0 and config.drifting.uncond_queue_len > 0


def state_shardings(mesh, abstract: TrainState) -> TrainState:
  """Parameters as sharding.state_shardings says; drifting sample queues spread over all devices."""
  shardings = sharding_lib.state_shardings(mesh, abstract)
  if isinstance(abstract.aux, dict):
    queues = {k: class_queues.shardings(mesh, q) for k, q in abstract.aux.items()
              if isinstance(q, class_queues.ClassQueues)}
    shardings = shardings.replace(aux=dict(shardings.aux, **queues))
  return shardings


def create_sharded_state(config, model, optimizer, mesh, key):
  """Returns (state, state_shardings) with every array born in its sharded layout."""
  abstract = jax.eval_shape(lambda k: init_state(config, model, optimizer, k), key)
  shardings = state_shardings(mesh, abstract)
  state = jax.jit(lambda k: init_state(config, model, optimizer, k), out_shardings=shardings)(key)
  return state, shardings


def update_ema(ema_params, params, decays, step=None, every: int = 1):
  """One EMA update per decay. With every = k > 1, only when `step` (updates applied so far,
  counting this one) is a multiple of k, with decay^k: k steps' worth of averaging at once."""
  if every == 1:
    return tuple(jax.tree_util.tree_map(lambda e, p: d * e + (1.0 - d) * p, ema, params)
                 for ema, d in zip(ema_params, decays))
  due = step % every == 0
  return tuple(jax.tree_util.tree_map(lambda e, p: jnp.where(due, d ** every * e + (1.0 - d ** every) * p, e),
                                      ema, params)
               for ema, d in zip(ema_params, decays))


def params_checksum(params) -> float:
  """Sum of |p| over all parameters: a cheap fingerprint to compare runs and processes."""
  return float(sum(jnp.sum(jnp.abs(p.astype(jnp.float32))) for p in jax.tree_util.tree_leaves(params)))
