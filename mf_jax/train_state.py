"""Training state: parameters, optimizer, EMA copies, and the network function built from a config.

Parameters are plain pytrees kept in float32; `model.compute_dtype = "bfloat16"` runs the matmuls in
bf16. The state is created directly in its sharded layout (jit with out_shardings), so no host ever
holds a full copy of a large model.
"""
from typing import Any, Tuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from mf_jax import class_queues
from mf_jax import sharding as sharding_lib
from mf_jax.models.dit import DiT
from mf_jax.models.feature_encoder import MaskedAutoencoder
from mf_jax.models.mlp import MLP

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
  # "encoder": frozen feature-encoder parameters or None}.
  aux: Any = None


def build_model(config) -> nn.Module:
  m = config.model
  if m.compute_dtype not in DTYPES:
    raise ValueError(f"model.compute_dtype={m.compute_dtype!r}: allowed values are {sorted(DTYPES)}.")
  if config.method == "mae":  # Feature encoder for drifting, pretrained as a masked autoencoder.
    return mae_model(config)
  conditions = ("alpha",) if config.method == "drifting" else ("t", "t_minus_r")
  if m.name == "mlp":  # Small vector data (2-D toys, 8x8 digits); output flattened, see net_fn.
    d = config.data
    return MLP(out_dim=d.image_size * d.image_size * d.channels, hidden_widths=tuple(m.mlp_widths),
               condition_names=conditions, num_classes=d.num_classes, remat=m.remat,
               dtype=DTYPES[m.compute_dtype])
  if m.name != "dit":
    raise ValueError(f"model.name={m.name!r}: allowed values are ['dit', 'mlp'].")
  return DiT(variant=m.variant, image_size=config.data.image_size, channels=config.data.channels,
             num_classes=config.data.num_classes, condition_names=conditions, depth=m.depth,
             hidden_size=m.hidden_size, num_heads=m.num_heads,
             attention_impl=m.attention_impl, remat=m.remat, dtype=DTYPES[m.compute_dtype],
             param_dtype=jnp.float64 if m.compute_dtype == "float64" else jnp.float32)


def mae_model(config) -> MaskedAutoencoder:
  e = config.mae
  if e.compute_dtype not in DTYPES:
    raise ValueError(f"mae.compute_dtype={e.compute_dtype!r}: allowed values are {sorted(DTYPES)}.")
  return MaskedAutoencoder(channels=config.data.channels, widths=tuple(e.widths),
                           blocks_per_stage=e.blocks_per_stage, groups=e.groups,
                           decoder_width=e.decoder_width, remat=e.remat,
                           dtype=DTYPES[e.compute_dtype])


def meanflow_u_fn(model: nn.Module, params):
  """The network as the objective sees it: u(z, r, t, labels), conditioned on (t, t - r)."""
  return lambda z, r, t, labels: model.apply(params, z, (t, t - r), labels).reshape(z.shape)


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
  if o.warmup_steps:
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, o.learning_rate, o.warmup_steps), schedule], [o.warmup_steps])
  chain = [optax.clip_by_global_norm(o.grad_clip)] if o.grad_clip > 0 else []
  chain.append(optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay))
  return optax.chain(*chain)


def example_inputs(config, batch_size: int = 1):
  """Dummy (x, conditions, labels) with the shapes the model is called with."""
  d = config.data
  x = jnp.zeros((batch_size, d.image_size, d.image_size, d.channels), jnp.float32)
  if config.method == "mae":
    return x, jnp.zeros(x.shape[:-1] + (1,), bool)
  num_conditions = 1 if config.method == "drifting" else 2
  conditions = tuple(jnp.zeros((batch_size,), jnp.float32) for _ in range(num_conditions))
  return x, conditions, jnp.zeros((batch_size,), jnp.int32)


def init_state(config, model, optimizer, key) -> TrainState:
  params = model.init(key, *example_inputs(config))
  aux = None
  if config.method == "drifting":
    d = config.data
    encoder = None
    if config.drifting.feature_encoder_workdir:  # A placeholder of the right shapes; see train.py.
      mae = config.copy_and_resolve_references()
      mae.method = "mae"
      encoder = mae_model(mae).init(key, *example_inputs(mae))
    shape = (d.image_size, d.image_size, d.channels)
    aux = {"queues": class_queues.init(max(d.num_classes, 1), config.drifting.queue_len, shape),
           "uncond_queue": (class_queues.init(1, config.drifting.uncond_queue_len, shape)
                            if uses_uncond_queue(config) else None),
           "encoder": encoder}
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


def update_ema(ema_params, params, decays):
  return tuple(jax.tree_util.tree_map(lambda e, p: d * e + (1.0 - d) * p, ema, params)
               for ema, d in zip(ema_params, decays))


def params_checksum(params) -> float:
  """Sum of |p| over all parameters: a cheap fingerprint to compare runs and processes."""
  return float(sum(jnp.sum(jnp.abs(p.astype(jnp.float32))) for p in jax.tree_util.tree_leaves(params)))
