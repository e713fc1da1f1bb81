"""Training state: parameters, optimizer, EMA copies, and the method's extra state.

Parameters are plain pytrees kept in float32; `model.compute_dtype = "bfloat16"` runs the matmuls in
bf16. The state is created directly in its sharded layout (jit with out_shardings), so no host ever
holds a full copy of a large model.
"""
import re
from typing import Any, Tuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from mf_jax import ema as ema_lib
from mf_jax import objectives
from mf_jax import sharding as sharding_lib
from mf_jax.networks import DTYPES  # noqa: F401  (re-exported: configs and tools name dtypes here)


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: number of updates applied.
  params: Any
  opt_state: Any
  ema_params: Tuple[Any, ...]  # One copy per EMA (mf_jax/ema.py: ema_decays or half-lives).
  # First step (1-based) whose loss or gradient was not finite (-1: none). Once set, updates stop, so the
  # parameters and any checkpoint keep the last good values; the host raises at its next check.
  nonfinite_step: jax.Array
  # The method's own state carried between steps (Objective.init_aux): e.g. drifting's sample
  # queues and frozen feature networks; None for MeanFlow.
  aux: Any = None


def objective(config) -> objectives.Objective:
  """The plug-in of config.method (mf_jax/objectives)."""
  return objectives.get(config.method)


def build_model(config) -> nn.Module:
  """The network config.method trains."""
  return objective(config).build_model(config)


def condition_names(config) -> Tuple[str, ...]:
  """The scalar conditions config.method's network embeds (e.g. ("t", "t_minus_r"), ("alpha",))."""
  return objective(config).condition_names(config)


def example_inputs(config, batch_size: int = 1):
  """Dummy model.init arguments with the shapes the model is called with."""
  return objective(config).example_inputs(config, batch_size)


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
  if o.name == "adam":
    chain.append(optax.adam(schedule, b1=o.b1, b2=o.b2))
  elif o.name == "muon":
    chain.append(muon(config, schedule))
  else:
    chain.append(optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay))
  return optax.chain(*chain)


def muon_dimension_numbers(params, exclude=()):
  """Muon's routing: MuonDimensionNumbers() (rows = fan-in, columns = fan-out) for each 2-D
  parameter whose path ("params/class_tokens") matches none of `exclude`; None (-> Adam) for the
  rest: biases, norm scales, gates, conv kernels (4-D), 3-D token tables. With exclude=() this is
  optax.contrib.muon's own default rule."""
  patterns = [re.compile(e) for e in exclude]

  def route(path, x):
    name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
    if x.ndim == 2 and not any(p.search(name) for p in patterns):
      return optax.contrib.MuonDimensionNumbers()
    return None
  return jax.tree_util.tree_map_with_path(route, params)


def muon(config, schedule) -> optax.GradientTransformation:
  """optax.contrib.muon: Muon (Nesterov momentum optim.muon_beta, 5 Newton-Schulz steps, update
  scale sqrt(max(1, fan_out / fan_in))) on the 2-D parameters, AdamW (optim.b1, optim.b2,
  Nesterov, eps 1e-8) on the rest; both with optim.weight_decay and the same schedule.

  With the defaults (muon_beta 0.95, b1 0.9, b2 0.95, weight decay 0) it is pMF's
  optax.contrib.muon(learning_rate, adam_b2=0.95)."""
  o = config.optim
  exclude = tuple(o.muon_exclude)
  return optax.contrib.muon(
      schedule, beta=o.muon_beta, weight_decay=o.weight_decay, adam_b1=o.b1, adam_b2=o.b2,
      adam_weight_decay=o.weight_decay,
      muon_weight_dimension_numbers=lambda params: muon_dimension_numbers(params, exclude))


def warmup_steps(config) -> int:
  """optim.warmup_steps, or optim.warmup_epochs epochs of data.num_train_examples when set."""
  o = config.optim
  if o.warmup_epochs:
    per_epoch = config.data.num_train_examples / config.train.global_batch_size
    return int(round(o.warmup_epochs * per_epoch))
  return o.warmup_steps


def init_state(config, model, optimizer, key) -> TrainState:
  params = model.init(key, *example_inputs(config))
  aux = objective(config).init_aux(config, key)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                    ema_params=tuple(params for _ in range(ema_lib.num_emas(config))),
                    nonfinite_step=jnp.full((), -1, jnp.int32), aux=aux)


def state_shardings(mesh, abstract: TrainState) -> TrainState:
  """Parameters as sharding.state_shardings says; an aux entry with a `layout(mesh)` method (e.g.
  drifting's sample queues, spread over all devices) lays itself out."""
  shardings = sharding_lib.state_shardings(mesh, abstract)
  if isinstance(abstract.aux, dict):
    own = {k: v.layout(mesh) for k, v in abstract.aux.items() if hasattr(v, "layout")}
    shardings = shardings.replace(aux=dict(shardings.aux, **own))
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
