"""The MeanFlow objective as pure functions of a network `u_fn(z, r, t, labels) -> u`.

Conventions (Geng et al. 2025, docs/meanflow.md):
  * t = 0 is data and t = 1 is noise: z_t = (1 - t) x + t e, conditional velocity v = e - x.
  * u(z_t, r, t) is the average velocity over [r, t] with r <= t; u(z, t, t) is the instantaneous v.
  * Times r, t have shape [B]; z, x, e, v, u have shape [B, ...]; labels have shape [B] (int32).
  * The null (unconditional) label is `num_classes`, one past the last real class.

MeanFlow identity: u = v - (t - r) du/dt, with du/dt = v . grad_z u + d_t u (r fixed), which is the
jvp of u_fn along (v, 0, 1). The target is stop-gradiented, so training needs no second derivative.
"""
import fractions
from typing import Callable, Mapping, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mf_jax import config_fields
from mf_jax.config_fields import FRACTION, NON_NEGATIVE, Field, choice, number, optional
from mf_jax.errors import ConfigError
from mf_jax.models import attention

Array = jax.Array
UFn = Callable[[Array, Array, Array, Array], Array]
# meanflow.class_dropout_rows: "independent" drops each row with probability class_dropout;
# "r_eq_t_first" is the official code's batch layout (see class_dropout_mask).
DROPOUT_ROWS = ("independent", "r_eq_t_first")
# meanflow.time_pairing: "sort" (paper, v0), "min_r" (py-meanflow v1) or "sort_eq_one_draw"
# (pixel MeanFlow); see sample_times.
TIME_PAIRINGS = ("sort", "min_r", "sort_eq_one_draw")
# Ablations of the paper's Table 1 (off the default path; the first entry is the paper's method).
# meanflow.jvp_tangent (Table 1b): the tangents of (z, r, t) in the jvp giving du/dt, each value
# mapped to whether r and t move. The allowed values of both knobs are the keys; config_checks
# refuses others before compiling, and a lookup here fails loudly rather than guessing.
JVP_TANGENTS = {"v,0,1": (False, True), "v,0,0": (False, False), "v,1,0": (True, False),
                "v,1,1": (True, True)}
# meanflow.time_conditioning (Table 1c): the scalars the network sees, as condition names; each
# name gets its own embedder (parameters named after it, e.g. DiT's "t_minus_r_embedder").
TIME_CONDITIONINGS = {"t,t-r": ("t", "t_minus_r"), "r,t": ("r", "t"), "t,r": ("t", "r"),
                      "t-r": ("t_minus_r",)}


# The `meanflow` config section: time sampler, r != t fraction, guidance in the target, weighting.
CONFIG = dict(
    # Null label = num_classes; 0 = unconditional. configs/base.py links it to data.num_classes.
    num_classes=Field(1000, NON_NEGATIVE, "leave it linked to data.num_classes"),
    time_sampler=Field("logit_normal", choice("logit_normal", "uniform"), "logit_normal (paper)"),
    time_mu=Field(-0.4, number(), "-0.4 (paper)"),
    time_sigma=Field(1.0, number(0.0, lo_open=True), "1.0 (paper)"),
    # r's own logit-normal (mu, sigma); None: the same as t's.
    time_mu_r=Field(None, optional(number()), "None (as time_mu), or e.g. -4.0 (CIFAR-10 v1)"),
    time_sigma_r=Field(None, optional(number(0.0, lo_open=True)), "None (as time_sigma), or 1.6"),
    # "sort": t, r = max, min (paper, v0) | "min_r": r = min(t, r) (v1).
    time_pairing=Field("sort", choice(*TIME_PAIRINGS), "sort (paper), min_r (v1), or "
                       "sort_eq_one_draw (pixel MeanFlow)"),
    # Fraction of the batch with r != t; 0 is flow matching.
    r_neq_t_ratio=Field(0.25, number(0, 1), "0.25 (paper); 0 is flow matching"),
    adaptive_p=Field(1.0, number(0.0), "1.0 (paper); 0 is plain L2"),  # Weight 1 / sg((d + c)^p).
    adaptive_c=Field(1e-3, number(0.0, lo_open=True), "1e-3 (paper)"),
    # omega = 1, kappa = 0: no guidance in the target (the effective scale is omega / (1 - kappa)).
    guidance_omega=Field(1.0, number(0.0, lo_open=True), "1.0 (no guidance) or e.g. 2.0"),
    guidance_kappa=Field(0.0, number(hi=1.0, hi_open=True), "0.0, or e.g. 0.5 with omega"),
    # Guidance only for t in [t_min, t_max].
    guidance_t_min=Field(0.0, FRACTION, "0.0"),
    guidance_t_max=Field(1.0, FRACTION, "1.0, or e.g. 0.75 (XL/2)"),
    class_dropout=Field(0.1, number(0.0, 1.0, hi_open=True), "0.1 (paper)"),
    # Which rows get the null label: "independent" (each with probability class_dropout) or
    # "r_eq_t_first" (the official code's layout: Binomial count, r = t rows first).
    class_dropout_rows=Field("independent", choice(*DROPOUT_ROWS),
                             "independent, or r_eq_t_first (official batch layout)"),
    # Table 1 ablations (the defaults are the paper's method):
    # Table 1b: tangents of (z, r, t) for du/dt; "v,0,0" | "v,1,0" | "v,1,1".
    jvp_tangent=Field("v,0,1", choice(*JVP_TANGENTS),
                      "v,0,1 (paper); the others are Table 1b ablations"),
    # Table 1c: scalars the network sees; "r,t" | "t,r" | "t-r" (one).
    time_conditioning=Field("t,t-r", choice(*TIME_CONDITIONINGS),
                            "t,t-r (paper); the others are Table 1c ablations", shape=True),
)


def default_config(num_classes: int = 1000) -> ml_collections.ConfigDict:
  """The `meanflow` section with the paper's ImageNet defaults."""
  config = config_fields.section(CONFIG)
  config.num_classes = num_classes
  return config


def _bcast(s: Array, like: Array) -> Array:
  """[B] -> [B, 1, ..., 1] so per-sample scalars broadcast against [B, ...] tensors."""
  return s.reshape(s.shape + (1,) * (like.ndim - s.ndim))


def validate_config(config) -> None:
  """The `meanflow` section: every field's rule, then the checks across its fields. Raises
  ConfigError (a ValueError) naming the field and the fix; call before compiling anything."""
  config_fields.check(CONFIG, config, "meanflow.")
  if config.time_sampler == "uniform" and (config.time_mu_r is not None
                                           or config.time_sigma_r is not None):
    raise ConfigError("meanflow.time_mu_r/time_sigma_r are logit-normal parameters but "
                      "time_sampler='uniform': set them to None or use 'logit_normal'.")
  if config.guidance_t_min > config.guidance_t_max:
    raise ConfigError(f"meanflow.guidance_t_min={config.guidance_t_min} > guidance_t_max="
                      f"{config.guidance_t_max}: the guidance interval must be [low, high].")
  guided = config.guidance_omega != 1.0 or config.guidance_kappa != 0.0
  if config.num_classes == 0 and (guided or config.class_dropout > 0):
    raise ConfigError("meanflow.guidance_omega/guidance_kappa/class_dropout need class labels, "
                      "but num_classes=0 (unconditional): set omega=1, kappa=0, class_dropout=0.")


def check_config(config) -> None:
  """The `meanflow` section against the rest of the config, for method='meanflow'."""
  validate_config(config.meanflow)
  if config.meanflow.num_classes != config.data.num_classes:
    raise ConfigError(f"meanflow.num_classes={config.meanflow.num_classes} differs from "
                      f"data.num_classes={config.data.num_classes}; leave it linked to data.")
  if config.model.name == "unet" and config.data.num_classes != 0:
    raise ConfigError(f"model.name='unet' is unconditional, but data.num_classes="
                      f"{config.data.num_classes}: set data.num_classes=0.")


def validate_labels(labels, num_classes: int) -> None:
  """Host-side check that labels lie in [0, num_classes) (the null label is added internally)."""
  import numpy as np
  labels = np.asarray(labels)
  hi = max(num_classes, 1)
  if labels.size and (labels.min() < 0 or labels.max() >= hi):
    raise ValueError(f"labels must lie in [0, {hi}) for num_classes={num_classes}; got values in "
                     f"[{labels.min()}, {labels.max()}]. The null label {num_classes} is reserved "
                     "for classifier-free guidance and is applied by the objective.")


def r_neq_t_pattern(batch_size: int, ratio: float) -> Tuple[int, int]:
  """(period P, count n): sample i has r != t iff i mod P < n, with n / P = ratio.

  Interleaving (rather than a first-k slice) keeps the r != t part static, independent of the
  device count, and spread evenly over every shard of a batch split across devices.
  """
  frac = fractions.Fraction(ratio).limit_denominator(batch_size)
  period = frac.denominator if batch_size % frac.denominator == 0 else batch_size
  return period, int(round(ratio * period))



def sample_times(key: Array, batch_size: int, config) -> Tuple[Array, Array]:
  """Draws (r, t), each [B], with 0 <= r <= t <= 1.

  Two independent draws a ~ logit-normal(time_mu, time_sigma) and b ~ logit-normal(time_mu_r,
  time_sigma_r) (r's parameters default to t's; or both uniform). time_pairing "sort" (paper, v0):
  t = max(a, b), r = min(a, b). "min_r" (py-meanflow v1): t = a, r = min(a, b), so r = t also
  where b > a. Then a static r_neq_t_ratio of the batch keeps that r (positions given by
  r_neq_t_pattern); the rest get r = t. "sort_eq_one_draw" (pixel MeanFlow's code): as "sort",
  but the r = t rows take t = r = a, one draw, instead of the larger of two. Batches are i.i.d.,
  so a fixed pattern has the same law as a random mask.
  """
  k_a, k_b = jax.random.split(key)
  shape = (batch_size,)
  if config.time_sampler == "logit_normal":
    mu_r, sigma_r = config.time_mu_r, config.time_sigma_r
    mu_r = config.time_mu if mu_r is None else mu_r
    sigma_r = config.time_sigma if sigma_r is None else sigma_r
    a = jax.nn.sigmoid(config.time_mu + config.time_sigma * jax.random.normal(k_a, shape))
    b = jax.nn.sigmoid(mu_r + sigma_r * jax.random.normal(k_b, shape))
  elif config.time_sampler == "uniform":
    a, b = jax.random.uniform(k_a, shape), jax.random.uniform(k_b, shape)
  else:
    raise ValueError(f"meanflow.time_sampler={config.time_sampler!r}: use 'logit_normal' or 'uniform'.")
  if config.time_pairing == "min_r":
    t, r = a, jnp.minimum(a, b)
  else:
    t, r = jnp.maximum(a, b), jnp.minimum(a, b)
  period, n = r_neq_t_pattern(batch_size, config.r_neq_t_ratio)
  distinct = jnp.arange(batch_size) % period < n
  if config.time_pairing == "sort_eq_one_draw":
    return jnp.where(distinct, r, a), jnp.where(distinct, t, a)
  return jnp.where(distinct, r, t), t


def class_dropout_mask(key: Array, batch_size: int, config) -> Array:
  """Which rows get the null label, [B] bool.

  "independent": each row with probability class_dropout. "r_eq_t_first" (the official code's
  layout): the count is Binomial(B, class_dropout) and the dropped rows are the first r = t rows
  (then r != t rows, should the count exceed them), so null-label rows almost never train the
  r != t average velocity; r = t rows are dropped with probability class_dropout / (1 - ratio).
  """
  drop = jax.random.bernoulli(key, config.class_dropout, (batch_size,))
  if config.class_dropout_rows == "independent":
    return drop
  period, n = r_neq_t_pattern(batch_size, config.r_neq_t_ratio)
  distinct = np.arange(batch_size) % period < n
  rank = np.empty(batch_size, np.int32)
  rank[np.concatenate([np.flatnonzero(~distinct), np.flatnonzero(distinct)])] = np.arange(batch_size)
  return jnp.asarray(rank) < jnp.sum(drop)


def time_conditions(names, r: Array, t: Array) -> Tuple[Array, ...]:
  """The scalars [B] each that condition names ("t", "r", "t_minus_r") stand for, in their order."""
  values = {"t": lambda: t, "r": lambda: r, "t_minus_r": lambda: t - r}
  unknown = [n for n in names if n not in values]
  if unknown:
    raise ValueError(f"condition names {tuple(names)}: {unknown} are not MeanFlow times; allowed "
                     f"are {sorted(values)} (see meanflow.time_conditioning).")
  return tuple(values[n]() for n in names)


def average_velocity_target(u_fn: UFn, z: Array, r: Array, t: Array, v: Array,
                            labels: Array, tangent: str = "v,0,1") -> Tuple[Array, Array]:
  """Returns (u, u_tgt): the network's u(z, r, t) and the stop-gradiented MeanFlow target.

  One forward-mode pass gives both u and du/dt = v . grad_z u + d_t u; the tangents (v, 0, 1) follow
  the argument order (z, r, t). Gradients flow only through the primal u.
  `tangent` (meanflow.jvp_tangent, a Table 1b ablation) picks other tangents of (r, t): "v,0,0"
  drops d_t u, "v,1,0" takes d_r u in its place, "v,1,1" adds both.
  """
  along_r, along_t = JVP_TANGENTS[tangent]
  tangent_r = jnp.ones_like(r) if along_r else jnp.zeros_like(r)
  tangent_t = jnp.ones_like(t) if along_t else jnp.zeros_like(t)
  with attention.forward_mode():  # Attention kernels without a jvp (cuDNN) step aside here.
    u, dudt = jax.jvp(lambda z_, r_, t_: u_fn(z_, r_, t_, labels),
                      (z, r, t), (v, tangent_r, tangent_t))
  u_tgt = v - _bcast(t - r, dudt) * dudt
  return u, jax.lax.stop_gradient(u_tgt)


def is_guided(config) -> bool:
  return config.guidance_omega != 1.0 or config.guidance_kappa != 0.0


def guidance_weights(t: Array, dropped: Array, config) -> Tuple[Array, Array]:
  """Per-sample (omega, kappa), [B] each: the configured values inside [guidance_t_min,
  guidance_t_max] for kept labels, and (1, 0) - no guidance - for dropped labels or other times."""
  active = (~dropped) & (t >= config.guidance_t_min) & (t <= config.guidance_t_max)
  return (jnp.where(active, config.guidance_omega, 1.0),
          jnp.where(active, config.guidance_kappa, 0.0))


def combine_guidance(v: Array, u_cond: Array, u_null: Array, w_omega: Array, w_kappa: Array) -> Array:
  """v_tilde = omega v + kappa u(z, t, t | c) + (1 - omega - kappa) u(z, t, t | null)."""
  w_omega, w_kappa = _bcast(w_omega, v), _bcast(w_kappa, v)
  return w_omega * v + w_kappa * u_cond + (1.0 - w_omega - w_kappa) * u_null


def guided_velocity(u_fn: UFn, z: Array, t: Array, v: Array, labels: Array, dropped: Array,
                    config) -> Array:
  """Velocity with classifier-free guidance folded in (jvp tangent and target), whole batch.

  Both network terms are inference calls under stop-gradient, batched into one call. meanflow_loss
  uses a cheaper arrangement of the same computation.
  """
  if not is_guided(config):
    return v
  null = jnp.full_like(labels, config.num_classes)
  both = u_fn(jnp.concatenate([z, z]), jnp.concatenate([t, t]), jnp.concatenate([t, t]),
              jnp.concatenate([labels, null]))
  u_cond, u_null = jax.lax.stop_gradient(jnp.split(both, 2))
  return combine_guidance(v, u_cond, u_null, *guidance_weights(t, dropped, config))


def _weighted_sample_errors(u: Array, u_tgt: Array, p: float, c: float) -> Tuple[Array, Array]:
  """(d / sg((d + c)^p) per sample [B], err = u - u_tgt); at least float32, float64 stays float64."""
  err = (u - u_tgt).astype(jnp.promote_types(u.dtype, jnp.float32))
  d = jnp.sum(jnp.square(err), axis=tuple(range(1, err.ndim)))
  return jax.lax.stop_gradient(1.0 / jnp.power(d + c, p)) * d, err


def adaptive_weighted_loss(u: Array, u_tgt: Array, p: float, c: float) -> Tuple[Array, Array]:
  """Mean over the batch of d / sg((d + c)^p), with d the per-sample summed squared error.

  Returns (loss, unweighted per-element MSE). p = 0 gives the plain summed L2 loss.
  """
  weighted, err = _weighted_sample_errors(u, u_tgt, p, c)
  return jnp.mean(weighted), jnp.mean(jnp.square(err))


def batch_sum_weighted_loss(u: Array, u_tgt: Array, p: float, c: float) -> Array:
  """Sum over the batch of d / sg((d + c)^p): adaptive_weighted_loss's loss times the batch size."""
  return jnp.sum(_weighted_sample_errors(u, u_tgt, p, c)[0])


def _split_pattern(tree, period: int, n: int):
  """Splits every [B, ...] leaf into (i mod period < n, the rest), keeping shards local."""
  def split(a):
    a = a.reshape((-1, period) + a.shape[1:])
    flat = lambda b: b.reshape((-1,) + b.shape[2:])
    return flat(a[:, :n]), flat(a[:, n:])
  pairs = {k: split(v) for k, v in tree.items()}
  return {k: p[0] for k, p in pairs.items()}, {k: p[1] for k, p in pairs.items()}


def meanflow_loss_plain(u_fn: UFn, x: Array, labels: Array, key: Array,
                        config) -> Tuple[Array, Mapping[str, Array]]:
  """The MeanFlow loss written out over the whole batch: the method on one screen.

  The same draws and the same value as meanflow_loss below, the fast path the trainer runs
  (tests/test_meanflow_fast_path.py checks loss and gradient agree to float64 rounding); this one
  is slower: the jvp and the guidance calls run on every row, also where r = t.
  """
  k_time, k_noise, k_drop = jax.random.split(key, 3)
  r, t = sample_times(k_time, x.shape[0], config)  # [B] each, 0 <= r <= t <= 1; t = 1 is noise.
  e = jax.random.normal(k_noise, x.shape, x.dtype)
  z = (1.0 - _bcast(t, x)) * x + _bcast(t, x) * e  # z_t on the straight path from x to e.
  v = e - x  # The conditional velocity dz_t/dt.
  dropped = class_dropout_mask(k_drop, x.shape[0], config)
  labels = jnp.where(dropped, config.num_classes, labels)  # Null label: trains u(z, r, t | null).
  v = guided_velocity(u_fn, z, t, v, labels, dropped, config)  # CFG folded into the target.
  # u(z, r, t) and sg(v - (t - r) du/dt), du/dt the jvp along (v, 0, 1): the MeanFlow identity.
  u, u_tgt = average_velocity_target(u_fn, z, r, t, v, labels, config.jvp_tangent)
  loss, mse = adaptive_weighted_loss(u, u_tgt, config.adaptive_p, config.adaptive_c)
  return loss, {"loss": loss, "mse": mse}


def meanflow_loss(u_fn: UFn, x: Array, labels: Array, key: Array,
                  config) -> Tuple[Array, Mapping[str, Array]]:
  """The whole MeanFlow training loss for a batch of data x [B, ...] and labels [B].

  `config` is the `meanflow` section of the run config. With r_neq_t_ratio = 0 this is exactly
  (adaptively weighted) flow matching, since (t - r) du/dt vanishes.

  Cost, in forwards F per image, ratio a = r_neq_t_ratio, dropout d = class_dropout: unguided,
  3F for r = t rows (forward + backward) and about 4F for r != t rows (the jvp adds ~1F), i.e.
  3 + a; guidance adds one inference call per row: the null label for every row, the conditional
  label for r != t rows only, i.e. (1 + a)F. Its floor is (1 - d)(1 + a)F, since class-dropped
  rows need neither call; they sit at random positions, so skipping them would need a static
  dropout layout, for at most d(1 + a)F (2.8% of the B/2 step). benchmarks/scale.py --floor
  measures both (benchmarks/RESULTS.md).
  """
  k_time, k_noise, k_drop = jax.random.split(key, 3)
  batch = x.shape[0]
  r, t = sample_times(k_time, batch, config)
  e = jax.random.normal(k_noise, x.shape, x.dtype)
  dropped = class_dropout_mask(k_drop, batch, config)
  return meanflow_loss_from_draws(u_fn, x, labels, r, t, e, dropped, config)


def meanflow_loss_from_draws(u_fn: UFn, x: Array, labels: Array, r: Array, t: Array, e: Array,
                             dropped: Array, config) -> Tuple[Array, Mapping[str, Array]]:
  """meanflow_loss for given times r, t [B], noise e [B, ...] and null-label rows dropped [B].

  Rows with r != t must sit where r_neq_t_pattern puts them (the fast path splits statically).
  """
  batch = x.shape[0]
  z = (1.0 - _bcast(t, x)) * x + _bcast(t, x) * e
  v = e - x
  labels = jnp.where(dropped, config.num_classes, labels)

  # Where r = t the term (t - r) du/dt vanishes: only the r != t part ("avg") needs the jvp, the
  # rest ("inst") takes a plain forward. Both parts are static, interleaved slices of the batch.
  period, n_avg = r_neq_t_pattern(batch, config.r_neq_t_ratio)
  avg, inst = _split_pattern(dict(z=z, r=r, t=t, v=v, y=labels, dropped=dropped), period, n_avg)
  has_avg, has_inst = n_avg > 0, n_avg < period

  if is_guided(config):
    # Inference calls: u(z, t, t | c) and u(z, t, t | null) on the avg part; only the null
    # velocity on the inst part, whose conditional velocity is the main forward's own output.
    # Separate calls, not one on a concatenation: joining parts would move rows between devices.
    null = lambda part: jnp.full_like(part["y"], config.num_classes)
    infer = lambda part, y: jax.lax.stop_gradient(u_fn(part["z"], part["t"], part["t"], y))
    if has_avg:
      u_cond_avg, u_null_avg = infer(avg, avg["y"]), infer(avg, null(avg))
    if has_inst:
      u_null_inst = infer(inst, null(inst))

  us, targets = [], []
  if has_avg:
    v_avg = avg["v"]
    if is_guided(config):
      v_avg = combine_guidance(v_avg, u_cond_avg, u_null_avg,
                               *guidance_weights(avg["t"], avg["dropped"], config))
    u, u_tgt = average_velocity_target(u_fn, avg["z"], avg["r"], avg["t"], v_avg, avg["y"],
                                       config.jvp_tangent)
    us.append(u)
    targets.append(u_tgt)
  if has_inst:
    u = u_fn(inst["z"], inst["t"], inst["t"], inst["y"])
    u_tgt = inst["v"]
    if is_guided(config):
      u_tgt = combine_guidance(u_tgt, jax.lax.stop_gradient(u), u_null_inst,
                               *guidance_weights(inst["t"], inst["dropped"], config))
    us.append(u)
    targets.append(jax.lax.stop_gradient(u_tgt))

  # Batch means as sums over the parts: concatenating them would move rows between devices.
  size = x.size
  loss = sum(batch_sum_weighted_loss(u, tgt, config.adaptive_p, config.adaptive_c)
             for u, tgt in zip(us, targets)) / batch
  at_least_f32 = lambda a: a.astype(jnp.promote_types(a.dtype, jnp.float32))
  mse = sum(jnp.sum(jnp.square(at_least_f32(u - tgt))) for u, tgt in zip(us, targets)) / size
  tgt_ms = sum(jnp.sum(jnp.square(at_least_f32(tgt))) for tgt in targets) / size
  return loss, {"loss": loss, "mse": mse, "u_tgt_rms": jnp.sqrt(tgt_ms)}
