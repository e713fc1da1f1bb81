"""The Drifting Models objective (Deng et al. 2026, REFERENCE.md section 2) as pure JAX functions.

A one-step generator x = f(e, alpha, class) is trained so that its samples follow a drifting field V
that vanishes when the generated distribution q equals the data distribution p: V moves each
generated sample towards nearby real samples y+ and away from nearby generated samples y-.

The field below is the one of the released JAX code (lambertae/drifting, commit accd0cf0; parity is
checked against golden files made by scripts/make_drifting_golden.py). For one group - a class and
one feature location l - with generated x_i (i < N) and columns y_j = [positives (P), the generated
samples themselves (N), guidance negatives (U)] of column weights w_j = [1, 1, w_unc]:

  d_ij   = sqrt(max(||x_i - y_j||^2, 1e-8))                      (plain L2 distance, floored)
  D      = sum w_j d_ij / sum w_j over ALL pairs of ALL groups of the step (every class, every
           location, self pairs included), one number per feature set;
  s      = max(D / sqrt(C), 1e-3)  divides the features (mean distance of phi / s about sqrt(C));
  logits = -(d_ij / max(D, 1e-3)) / tau, self pairs (x_i as its own negative) masked out;
  A_ij   = w_j * sqrt(max(softmax_j(logits) * softmax_i(logits), 1e-6)):
           both softmaxes unweighted (the guidance weight enters only after them), and a floor that
           gives every pair, self pairs included, an affinity of at least 1e-3 w_j (config field
           affinity_floor: 1e-3 as released, 0 by default, see default_config);
  F_i    = sum_{j pos} A_ij (sum_{k neg} A_ik) (y_j - x_i) / s - sum_{j neg} A_ij (sum_{k pos} A_ik) (y_j - x_i) / s;
  V      = sum over tau of F_tau / max(rms(F_tau), 1e-4), the RMS again over the whole step.

Guidance: U real samples of any class (from a bank of recent samples) are extra negatives with
w_unc = (alpha - 1)(N - 1) / U, alpha drawn per class from p(alpha) ~ alpha^-k on [alpha_min,
alpha_max] (k = 0 uniform) and given to the generator as a condition; a fraction of the classes
may get alpha = 1 (no guidance).

Loss per feature set: mean over [N_c, N, L, C] of (phi(x)/s - sg(phi(x)/s + V))^2, whose value is
mean(V^2) and whose gradient is -2 V / (s size); summed over feature sets. S, V and everything
inside them are under stop-gradient. Because S and rms(F) are plain means over the class axis,
under jit with the classes split over devices they become cross-device reductions by themselves.

Memory: the [N_c, L, N, P + N + U] distance/kernel arrays dominate. `class_chunk` > 0 computes them
for that many classes at a time (lax.map), in two passes: the first sums the distances for D, the
second computes the unnormalised F per temperature and its sum of squares; the RMS division follows.
"""
import math
from typing import Callable, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections

Array = jax.Array
GeneratorFn = Callable[[Array, Array, Array], Array]
FeatureFn = Callable[[Array], Mapping[str, Array]]

DIST_SQ_FLOOR = 1e-8   # Squared distances below this count as this (self pairs: d = 1e-4).
RELEASED_AFFINITY_FLOOR = 1e-3  # A_ij >= w_j * this: the released floor 1e-6 on the product.
SCALE_FLOOR = 1e-3     # Floors of D and of s = D / sqrt(C).
RMS_FLOOR = 1e-4       # Floor of each temperature's field RMS before dividing by it.


def default_config() -> ml_collections.ConfigDict:
  """The `drifting` config section with the released ablation recipe as defaults."""
  return ml_collections.ConfigDict(dict(
      temperatures=(0.02, 0.05, 0.2),
      normalize_distances=True,   # Distances in units of their step mean D; features divided by s.
      normalize_drift=True,       # Each tau's field rescaled to unit RMS (over the step) before summing.
      num_neg=64,                 # Generated samples per class (N_neg); they are also the negatives.
      num_unc=16,                 # Guidance negatives per class (N_unc); 0 turns guidance off.
      alpha_min=1.0,              # Guidance scale alpha, drawn per class.
      alpha_max=4.0,
      alpha_power=3.0,            # p(alpha) ~ alpha^-alpha_power on [alpha_min, alpha_max]; 0 = uniform.
      no_guidance_frac=0.0,       # Fraction of classes drawn with alpha = 1 instead.
      noise_shape=(),             # Generator input shape per sample; () means the sample shape.
      class_chunk=0,              # Classes per pass of the kernel computation; 0 = all at once.
      # Lower bound of every pair's affinity A_ij (times w_j); 0 = none. The released code uses
      # RELEASED_AFFINITY_FLOOR = 1e-3 (ImageNet configs set it). Against the uniform affinity
      # 1/sqrt(N (P + N + U)) it weighs more the larger the batch: ~1% at 64 x 144, but at the toy's
      # 512 x 1024 it swamps the kernel (checkerboard energy distance 0.97 instead of 0.004).
      affinity_floor=0.0,
  ))


def validate_config(config) -> None:
  """Raises ValueError naming the field and the fix; call before compiling anything."""
  temps = tuple(config.temperatures)
  if not temps or any(t <= 0 for t in temps):
    raise ValueError(f"drifting.temperatures={temps}: need one or more positive values, "
                     "e.g. (0.02, 0.05, 0.2).")
  if config.num_neg < 2:
    raise ValueError(f"drifting.num_neg={config.num_neg}: need >= 2 generated samples per class "
                     "(each one's own pair is masked, so one sample has no negatives).")
  if config.num_unc < 0:
    raise ValueError(f"drifting.num_unc={config.num_unc}: must be >= 0 (0 turns guidance off).")
  if config.num_unc > 0 and not 1.0 <= config.alpha_min <= config.alpha_max:
    raise ValueError(f"drifting.alpha_min={config.alpha_min}, alpha_max={config.alpha_max}: need "
                     "1 <= alpha_min <= alpha_max (alpha = 1 is no guidance).")
  if not 0.0 <= config.no_guidance_frac <= 1.0:
    raise ValueError(f"drifting.no_guidance_frac={config.no_guidance_frac}: must lie in [0, 1].")
  if config.class_chunk < 0:
    raise ValueError(f"drifting.class_chunk={config.class_chunk}: must be >= 0 (0 = all at once).")
  classes = config.get("classes_per_step", 0)
  if config.class_chunk and classes and classes % config.class_chunk:
    raise ValueError(f"drifting.class_chunk={config.class_chunk} must divide "
                     f"drifting.classes_per_step={classes}.")


def pairwise_distance(a: Array, b: Array) -> Array:
  """Euclidean distances [..., N, M] between a [..., N, C] and b [..., M, C], floored at 1e-4."""
  # Distances are translation invariant; centring on the rows first limits float32 cancellation in
  # |a|^2 + |b|^2 - 2ab when the features share a large offset (distant columns matter little).
  center = jnp.mean(a, axis=-2, keepdims=True)
  a, b = a - center, b - center
  sq = (jnp.sum(a * a, -1)[..., :, None] + jnp.sum(b * b, -1)[..., None, :]
        - 2.0 * jnp.einsum("...nc,...mc->...nm", a, b))
  return jnp.sqrt(jnp.maximum(sq, DIST_SQ_FLOOR))


def kernel_force(logits: Array, x: Array, y: Array, col_weights: Array, num_pos: int,
                 affinity_floor: float = 0.0) -> Array:
  """The batch-form field [..., N, C] of x [..., N, C] towards/away from columns y [..., T, C].

  logits [..., N, T] (masked pairs -inf); the first num_pos columns are positives, the rest
  negatives; col_weights broadcast to [..., N, T] and multiply the affinities after both softmaxes.
  """
  prod = jax.nn.softmax(logits, axis=-1) * jax.nn.softmax(logits, axis=-2)
  aff = col_weights * jnp.sqrt(jnp.maximum(prod, affinity_floor ** 2))
  a_pos, a_neg = aff[..., :num_pos], aff[..., num_pos:]
  coeff = jnp.concatenate([a_pos * jnp.sum(a_neg, -1, keepdims=True),
                           -a_neg * jnp.sum(a_pos, -1, keepdims=True)], axis=-1)
  # sum_j coeff_ij (y_j - x_i); the coefficients sum to zero only without the floor and weights.
  return jnp.einsum("...nt,...tc->...nc", coeff, y) - jnp.sum(coeff, -1)[..., None] * x


def _self_mask(n: int, num_pos: int, num_cols: int) -> Array:
  """[N, P + M] True where column j is x_i itself (negatives start with the generated batch)."""
  return jnp.arange(num_cols)[None, :] == jnp.arange(n)[:, None] + num_pos


def drift_field(x: Array, y_pos: Array, y_neg: Array, tau: float, *, mask_self: bool = False,
                neg_weights: Optional[Array] = None, affinity_floor: float = 0.0) -> Array:
  """One temperature's field F [N, C] for x [N, C], y_pos [P, C], y_neg [M, C], raw distances.

  Args:
    tau: kernel temperature, in the units of the distances.
    mask_self: the first N negatives are x itself; their self pairs keep only the floor affinity.
    neg_weights: optional weights >= 0 of the negatives, [M] (or [N, M]).
  """
  x, y_pos, y_neg = jax.lax.stop_gradient((x, y_pos, y_neg))
  n, p, m = x.shape[0], y_pos.shape[0], y_neg.shape[0]
  if mask_self and m < n:
    raise ValueError(f"mask_self needs y_neg to start with x: got {m} negatives for {n} samples.")
  y = jnp.concatenate([y_pos, y_neg])
  logits = -pairwise_distance(x, y) / tau
  if mask_self:
    logits = jnp.where(_self_mask(n, p, p + m), -jnp.inf, logits)
  w = jnp.ones((m,), x.dtype) if neg_weights is None else jnp.asarray(neg_weights, x.dtype)
  w = jnp.concatenate([jnp.ones(w.shape[:-1] + (p,), x.dtype), w], axis=-1)
  return kernel_force(logits, x, y, w, p, affinity_floor)


def map_over_classes(fn: Callable, args: Tuple[Array, ...], chunk: int):
  """fn(*args) for args with a leading class axis [N_c, ...], `chunk` classes at a time.

  fn maps [c, ...] arrays to a pytree of [c, ...] arrays. Chunk b holds the classes b, b + n,
  b + 2n, ... (n = N_c / chunk), so with the classes split over devices in contiguous blocks every
  device works on its own classes in every pass.
  """
  n_c = args[0].shape[0]
  if chunk <= 0 or chunk >= n_c:
    return fn(*args)
  if n_c % chunk:
    raise ValueError(f"drifting.class_chunk={chunk} must divide the {n_c} classes per step "
                     "(drifting.classes_per_step).")
  n = n_c // chunk
  split = lambda t: jnp.swapaxes(t.reshape((chunk, n) + t.shape[1:]), 0, 1)
  out = jax.lax.map(lambda a: fn(*a), tuple(split(t) for t in args))
  return jax.tree_util.tree_map(lambda t: jnp.swapaxes(t, 0, 1).reshape((n_c,) + t.shape[2:]), out)


def feature_set_field(phi_gen: Array, phi_pos: Array, phi_unc: Array, unc_weight: Array,
                      temperatures: Sequence[float], normalize_distances: bool = True,
                      normalize_drift: bool = True, class_chunk: int = 0,
                      affinity_floor: float = 0.0) -> Tuple[Array, Array, Array]:
  """The multi-temperature field of one feature set for all classes of a step (stop-gradient).

  Args:
    phi_gen: generated features [N_c, N, L, C]; they are also the negatives (self pairs masked).
    phi_pos: positive (real, same class) features [N_c, P, L, C].
    phi_unc: guidance negatives [N_c, U, L, C] (U may be 0).
    unc_weight: weight of each class's guidance negatives, [N_c].
    class_chunk: classes per pass of the kernel computation (0 = all at once).
    affinity_floor: lower bound of the affinities (times the column weight); 0 = none.
  Returns:
    (V [N_c, N, L, C] in units of phi / s, s [], raw RMS per tau [len(temperatures)]).
  """
  dtype = jnp.promote_types(phi_gen.dtype, jnp.float32)
  phi_gen, phi_pos, phi_unc, unc_weight = (
      jax.lax.stop_gradient(t).astype(dtype) for t in (phi_gen, phi_pos, phi_unc, unc_weight))
  n_c, n, num_loc, ch = phi_gen.shape
  p, u = phi_pos.shape[1], phi_unc.shape[1]
  # Groups [N_c, L, rows, C]: one kernel per class and location.
  x = jnp.swapaxes(phi_gen, 1, 2)
  y = jnp.swapaxes(jnp.concatenate([phi_pos, phi_gen, phi_unc], axis=1), 1, 2)  # [N_c, L, T, C]
  col_weights = lambda w: jnp.concatenate(
      [jnp.ones(w.shape + (p + n,), dtype), jnp.broadcast_to(w[:, None], w.shape + (u,))], -1)

  if normalize_distances:
    def weighted_distance_sum(x, y, w):
      return jnp.einsum("clnt,ct->c", pairwise_distance(x, y), col_weights(w))
    dist_sum = jnp.sum(map_over_classes(weighted_distance_sum, (x, y, unc_weight), class_chunk))
    mean_dist = dist_sum / (float(n * num_loc) * jnp.sum(col_weights(unc_weight)))
    dist_unit = jnp.maximum(mean_dist, SCALE_FLOOR)
    scale = jnp.maximum(mean_dist / math.sqrt(ch), SCALE_FLOOR)
  else:
    dist_unit = scale = jnp.ones((), dtype)

  is_self = _self_mask(n, p, p + n + u)
  temps = jnp.asarray(temperatures, dtype)

  def forces(x, y, w):
    dist = jnp.where(is_self, jnp.inf, pairwise_distance(x, y) / dist_unit)
    w = col_weights(w)[:, None, None, :]
    def one_temperature(tau):  # One traced body for all temperatures keeps the program small.
      f = kernel_force(-dist / tau, x, y, w, p, affinity_floor) / scale
      return f, jnp.sum(jnp.square(f), axis=(1, 2, 3))
    f, sq = jax.lax.map(one_temperature, temps)  # [R, c, L, N, C], [R, c]
    return jnp.swapaxes(f, 0, 1), jnp.swapaxes(sq, 0, 1)

  f, sq = map_over_classes(forces, (x, y, unc_weight), class_chunk)  # [N_c, R, L, N, C], [N_c, R]
  # A Python float: the entry count passes 2^31 at the released pixel batches (an int would not
  # fit JAX's int32).
  rms = jnp.sqrt(jnp.sum(sq, axis=0) / float(n_c * num_loc * n * ch))
  if normalize_drift:
    f = f / jnp.maximum(rms, RMS_FLOOR)[:, None, None, None]
  return jnp.swapaxes(jnp.sum(f, axis=1), 1, 2), scale, rms


def drifting_mse(phi_x: Array, v: Array, scale: Array) -> Array:
  """mean((phi/s - sg(phi/s + V))^2) over all entries; its value is mean(V^2), its gradient -2V/(s size)."""
  phi_n = phi_x.astype(v.dtype) / jax.lax.stop_gradient(scale)
  target = jax.lax.stop_gradient(phi_n + v)
  return jnp.mean(jnp.square(phi_n - target))


def guidance_weight(alpha: Array, num_neg: int, num_unc: int) -> Array:
  """w = (alpha - 1)(N_neg - 1) / N_unc: the weight of each guidance negative."""
  return (alpha - 1.0) * (num_neg - 1) / max(num_unc, 1)


def sample_alpha(key: Array, num_classes: int, config) -> Array:
  """Guidance scales [N_c], one per class; all ones without guidance.

  p(alpha) ~ alpha^-k on [alpha_min, alpha_max] (k = alpha_power; k = 0 uniform, k = 1
  log-uniform), drawn by inverting its CDF; then a fraction no_guidance_frac of the classes is set
  to alpha = 1. One alpha per class keeps the generated negatives of a class from one distribution,
  so the guidance weight keeps its meaning.
  """
  if config.num_unc == 0:
    return jnp.ones((num_classes,))
  k_alpha, k_none = jax.random.split(key)
  lo, hi, k = float(config.alpha_min), float(config.alpha_max), float(config.alpha_power)
  uniform = jax.random.uniform(k_alpha, (num_classes,))
  if abs(k - 1.0) < 1e-6:
    alpha = lo * jnp.exp(uniform * math.log(hi / lo))
  else:
    alpha = (lo ** (1 - k) + uniform * (hi ** (1 - k) - lo ** (1 - k))) ** (1.0 / (1 - k))
  if config.no_guidance_frac > 0:
    alpha = jnp.where(jax.random.uniform(k_none, (num_classes,)) < config.no_guidance_frac, 1.0, alpha)
  return alpha


def other_class_samples(key: Array, real_by_class: Array, num_unc: int) -> Array:
  """For each class c, num_unc real samples of uniformly random other classes in the batch.

  real_by_class [N_c, N_pos, ...] -> [N_c, num_unc, ...]. Needs N_c >= 2. A stand-in for the
  released unconditional bank of recent real samples when the caller passes none.
  """
  n_c, n_pos = real_by_class.shape[:2]
  if n_c < 2:
    raise ValueError("Guidance negatives come from the other classes of the batch, but the batch "
                     "has one class: pass uncond_real or set drifting.num_unc=0.")
  k_cls, k_idx = jax.random.split(key)
  shift = jax.random.randint(k_cls, (n_c, num_unc), 1, n_c)
  other = (jnp.arange(n_c)[:, None] + shift) % n_c
  idx = jax.random.randint(k_idx, (n_c, num_unc), 0, n_pos)
  return real_by_class[other, idx]


def raw_features(x: Array) -> Mapping[str, Array]:
  """The identity feature space: one vector per sample, [B, 1, prod(sample shape)]."""
  return {"raw": x.reshape(x.shape[0], 1, -1)}


def _features(feature_fn: FeatureFn, x: Array, groups: int) -> Mapping[str, Array]:
  """feature_fn on a flat batch, regrouped to [groups, B / groups, L, C] per set."""
  out = {}
  for name, f in feature_fn(x).items():
    if f.ndim != 3 or f.shape[0] != x.shape[0]:
      raise ValueError(f"feature set {name!r} has shape {f.shape}; feature functions must return "
                       f"[B, L, C] with B = {x.shape[0]}.")
    out[name] = f.reshape((groups, -1) + f.shape[1:])
  return out


def drifting_loss(generator_fn: GeneratorFn, real_by_class: Array, labels: Array, key: Array,
                  config, feature_fn: FeatureFn = raw_features,
                  uncond_real: Optional[Array] = None, *,
                  alpha: Optional[Array] = None) -> Tuple[Array, Mapping[str, Array]]:
  """The drifting training loss for N_c classes at once.

  Args:
    generator_fn: (noise [B, *noise_shape], alpha [B], labels [B]) -> samples [B, *sample_shape].
    real_by_class: positives [N_c, N_pos, *sample_shape], row c of class labels[c].
    labels: class ids [N_c] (int).
    key: PRNG key for noise, alpha and guidance negatives.
    config: the `drifting` section (see default_config).
    feature_fn: samples [B, ...] -> {name: [B, L, C]}; applied to generated and real samples alike.
    uncond_real: guidance negatives [N_c, N_unc, *sample_shape], real samples of any class (the
      released recipe draws them from a bank of recent samples); default: real samples of other
      classes of this batch.
    alpha: optional guidance scales [N_c] instead of drawing them.
  Returns:
    (loss, metrics). Generated samples are N_c * N_neg in one generator call, class-major.
  """
  n_c = real_by_class.shape[0]
  sample_shape = tuple(real_by_class.shape[2:])
  n_neg, n_unc = int(config.num_neg), int(config.num_unc)
  noise_shape = tuple(config.noise_shape) or sample_shape
  chunk = int(config.get("class_chunk", 0))
  if chunk and n_c % chunk:
    raise ValueError(f"drifting.class_chunk={chunk} must divide the {n_c} classes per step.")
  k_noise, k_alpha, k_unc = jax.random.split(key, 3)

  if alpha is None:
    alpha = sample_alpha(k_alpha, n_c, config)  # [N_c]
  noise = jax.random.normal(k_noise, (n_c * n_neg,) + noise_shape)
  generated = generator_fn(noise, jnp.repeat(alpha, n_neg), jnp.repeat(labels, n_neg))
  if generated.shape[0] != n_c * n_neg or tuple(generated.shape[1:]) != sample_shape:
    raise ValueError(f"generator_fn returned {generated.shape}; expected "
                     f"{(n_c * n_neg,) + sample_shape} to match real_by_class {real_by_class.shape}.")

  if n_unc > 0:
    if uncond_real is None:
      uncond_real = other_class_samples(k_unc, real_by_class, n_unc)
    if uncond_real.shape[:2] != (n_c, n_unc):
      raise ValueError(f"uncond_real has shape {uncond_real.shape}; expected [{n_c}, {n_unc}, ...] "
                       "(N_c, drifting.num_unc).")
    refs = jnp.concatenate([real_by_class, uncond_real.astype(real_by_class.dtype)], axis=1)
  else:
    refs = real_by_class
  # Class-major flat batch: row c of the regrouped features is [positives, guidance negatives] of c.
  refs = refs.reshape((-1,) + sample_shape)
  real_feats = _features(feature_fn, jax.lax.stop_gradient(refs), n_c)
  gen_feats = _features(feature_fn, generated, n_c)
  n_pos = real_by_class.shape[1]
  unc_weight = guidance_weight(alpha, n_neg, n_unc)  # [N_c]

  temps = tuple(float(t) for t in config.temperatures)
  loss, metrics = jnp.zeros(()), {}
  rms_sum = jnp.zeros((len(temps),))
  for name, phi_x in gen_feats.items():
    phi_real = real_feats[name]
    v, scale, rms = feature_set_field(phi_x, phi_real[:, :n_pos], phi_real[:, n_pos:], unc_weight,
                                      temps, config.normalize_distances, config.normalize_drift,
                                      chunk, float(config.affinity_floor))
    set_loss = drifting_mse(phi_x, v, scale)
    loss = loss + set_loss
    rms_sum = rms_sum + rms
    metrics[f"loss/{name}"] = set_loss
    metrics[f"feature_scale/{name}"] = scale
  metrics["loss"] = loss
  for i, tau in enumerate(temps):
    metrics[f"drift_rms/tau{tau:g}"] = rms_sum[i] / len(gen_feats)
  metrics["alpha_mean"] = jnp.mean(alpha)
  return loss, metrics


def generate(generator_fn: GeneratorFn, key: Array, labels: Array, alpha: float,
             noise_shape: Sequence[int]) -> Array:
  """One-step sampling: x = f(e, alpha, label) with e ~ N(0, I) of shape [B, *noise_shape]."""
  noise = jax.random.normal(key, (labels.shape[0],) + tuple(noise_shape))
  return generator_fn(noise, jnp.full((labels.shape[0],), alpha, jnp.float32), labels)
