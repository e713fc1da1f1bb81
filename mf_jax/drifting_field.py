"""The drifting field V of Drifting Models (docs/drifting.md): pure, stop-gradient JAX.

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
           affinity_floor: 1e-3 as released, 0 by default, see drifting.default_config);
  F_i    = sum_{j pos} A_ij (sum_{k neg} A_ik) (y_j - x_i) / s - sum_{j neg} A_ij (sum_{k pos} A_ik) (y_j - x_i) / s;
  V      = sum over tau of F_tau / max(rms(F_tau), 1e-4), the RMS again over the whole step.

Loss per feature set: mean over [N_c, N, L, C] of (phi(x)/s - sg(phi(x)/s + V))^2, whose value is
mean(V^2) and whose gradient is -2 V / (s size); summed over feature sets. S, V and everything
inside them are under stop-gradient. Because S and rms(F) are plain means over the class axis,
under jit with the classes split over devices they become cross-device reductions by themselves.

The field is computed in stages whose only links are step statistics: distance_statistics (sums
whose ratio over the step is D), field_units (D -> distance unit and s), then each temperature's
unnormalised F and its sum of squares, field_rms, and the sum over tau of F_tau / rms_tau.
feature_set_field runs them on all classes at once, keeping every tau's F (raw_forces,
combine_temperatures: the kernel computed once). drifting.drifting_value_and_grad runs them on one
group of classes at a time, summing the statistics over the groups, and recomputes the kernel in
each stage so that one temperature's F is in memory at a time (force_square_sums,
normalized_field). Within a stage, `class_chunk` > 0 computes the [N_c, L, N, P + N + U]
distance/kernel arrays for that many classes at a time (lax.map).
"""
import math
from typing import Callable, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

Array = jax.Array

DIST_SQ_FLOOR = 1e-8   # Squared distances below this count as this (self pairs: d = 1e-4).
SCALE_FLOOR = 1e-3     # Floors of D and of s = D / sqrt(C).
RMS_FLOOR = 1e-4       # Floor of each temperature's field RMS before dividing by it.


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


def split_classes(tree, chunk: int):
  """[N_c, ...] arrays -> [N_c / chunk, chunk, ...]: pass b holds the classes b, b + n, b + 2n, ...

  (n = N_c / chunk passes), so with the classes split over devices in contiguous blocks every
  device works on its own classes in every pass. merge_classes inverts it.
  """
  def split(t):
    n_c = t.shape[0]
    return jnp.swapaxes(t.reshape((chunk, n_c // chunk) + t.shape[1:]), 0, 1)
  return jax.tree_util.tree_map(split, tree)


def merge_classes(tree):
  """[n, chunk, ...] -> [n * chunk, ...], the inverse of split_classes."""
  return jax.tree_util.tree_map(
      lambda t: jnp.swapaxes(t, 0, 1).reshape((t.shape[0] * t.shape[1],) + t.shape[2:]), tree)


def map_over_classes(fn: Callable, args: Tuple[Array, ...], chunk: int):
  """fn(*args) for args with a leading class axis [N_c, ...], `chunk` classes at a time.

  fn maps [c, ...] arrays to a pytree of [c, ...] arrays; the passes are those of split_classes.
  """
  n_c = args[0].shape[0]
  if chunk <= 0 or chunk >= n_c:
    return fn(*args)
  if n_c % chunk:
    raise ValueError(f"drifting.class_chunk={chunk} must divide the {n_c} classes per step "
                     "(drifting.classes_per_step).")
  return merge_classes(jax.lax.map(lambda a: fn(*a), split_classes(args, chunk)))


def _class_groups(phi_gen: Array, phi_pos: Array, phi_unc: Array, unc_weight: Array):
  """Stop-gradient, at least float32: x [N_c, L, N, C], y [N_c, L, P + N + U, C] (one kernel per
  class and location), column weights [N_c, P + N + U]."""
  dtype = jnp.promote_types(phi_gen.dtype, jnp.float32)
  phi_gen, phi_pos, phi_unc, unc_weight = (
      jax.lax.stop_gradient(t).astype(dtype) for t in (phi_gen, phi_pos, phi_unc, unc_weight))
  x = jnp.swapaxes(phi_gen, 1, 2)
  y = jnp.swapaxes(jnp.concatenate([phi_pos, phi_gen, phi_unc], axis=1), 1, 2)
  n_c, u = unc_weight.shape[0], phi_unc.shape[1]
  w = jnp.concatenate([jnp.ones((n_c, y.shape[2] - u), dtype),
                       jnp.broadcast_to(unc_weight[:, None], (n_c, u))], -1)
  return x, y, w


def distance_statistics(phi_gen: Array, phi_pos: Array, phi_unc: Array, unc_weight: Array,
                        class_chunk: int = 0) -> Array:
  """[sum w_j d_ij, sum w_j] over all pairs and locations of the classes given (arguments as
  feature_set_field's). Summed over the step's classes, their ratio is the mean distance D."""
  x, y, w = _class_groups(phi_gen, phi_pos, phi_unc, unc_weight)
  n, num_loc = x.shape[2], x.shape[1]
  def weighted_distance_sum(x, y, w):
    return jnp.einsum("clnt,ct->c", pairwise_distance(x, y), w)
  dist_sum = jnp.sum(map_over_classes(weighted_distance_sum, (x, y, w), class_chunk))
  return jnp.stack([dist_sum, float(n * num_loc) * jnp.sum(w)])


def field_units(dist_stats: Optional[Array], channels: int) -> Tuple[Array, Array]:
  """(distance unit max(D, 1e-3), feature scale s = max(D / sqrt(C), 1e-3)) from the step's
  distance_statistics; None (normalize_distances off) gives (1, 1)."""
  if dist_stats is None:
    return jnp.ones(()), jnp.ones(())
  mean_dist = dist_stats[0] / dist_stats[1]
  return (jnp.maximum(mean_dist, SCALE_FLOOR),
          jnp.maximum(mean_dist / math.sqrt(channels), SCALE_FLOOR))


def _per_class_forces(fn: Callable, phi_gen: Array, phi_pos: Array, phi_unc: Array,
                      unc_weight: Array, units: Tuple[Array, Array], class_chunk: int,
                      affinity_floor: float):
  """fn(force, x) on `class_chunk` classes at a time (map_over_classes), where x [c, L, N, C] are
  their generated features and force(tau) -> F_tau [c, L, N, C], in units of phi / s."""
  x, y, w = _class_groups(phi_gen, phi_pos, phi_unc, unc_weight)
  dist_unit, scale = units
  p = phi_pos.shape[1]
  is_self = _self_mask(x.shape[2], p, y.shape[2])

  def per_chunk(x, y, w):
    # Self pairs (x_i as its own negative) at +inf: masked in both softmaxes.
    dist = jnp.where(is_self, jnp.inf, pairwise_distance(x, y) / dist_unit)
    force = lambda tau: kernel_force(-dist / tau, x, y, w[:, None, None, :], p,
                                     affinity_floor) / scale
    return fn(force, x)
  return map_over_classes(per_chunk, (x, y, w), class_chunk)


def raw_forces(phi_gen: Array, phi_pos: Array, phi_unc: Array, unc_weight: Array,
               temperatures: Sequence[float], units: Tuple[Array, Array], class_chunk: int = 0,
               affinity_floor: float = 0.0) -> Tuple[Array, Array]:
  """Each temperature's unnormalised field, in units of phi / s, for the classes given.

  Returns (F [N_c, R, L, N, C], sum of F^2 over these classes [R]); R = len(temperatures).
  """
  temps = jnp.asarray(temperatures, jnp.promote_types(phi_gen.dtype, jnp.float32))
  def stacked(force, x):
    def one_temperature(tau):  # One traced body for all temperatures keeps the program small.
      f = force(tau)
      return f, jnp.sum(jnp.square(f), axis=(1, 2, 3))
    f, sq = jax.lax.map(one_temperature, temps)  # [R, c, L, N, C], [R, c]
    return jnp.swapaxes(f, 0, 1), jnp.swapaxes(sq, 0, 1)
  f, sq = _per_class_forces(stacked, phi_gen, phi_pos, phi_unc, unc_weight, units, class_chunk,
                            affinity_floor)
  return f, jnp.sum(sq, axis=0)


def force_square_sums(phi_gen: Array, phi_pos: Array, phi_unc: Array, unc_weight: Array,
                      temperatures: Sequence[float], units: Tuple[Array, Array],
                      class_chunk: int = 0, affinity_floor: float = 0.0) -> Array:
  """raw_forces' sums of squares [R] alone: one temperature's force in memory at a time."""
  temps = jnp.asarray(temperatures, jnp.promote_types(phi_gen.dtype, jnp.float32))
  def sums(force, x):
    square_sum = lambda tau: jnp.sum(jnp.square(force(tau)), axis=(1, 2, 3))
    return jnp.swapaxes(jax.lax.map(square_sum, temps), 0, 1)  # [c, R]
  return jnp.sum(_per_class_forces(sums, phi_gen, phi_pos, phi_unc, unc_weight, units,
                                   class_chunk, affinity_floor), axis=0)


def normalized_field(phi_gen: Array, phi_pos: Array, phi_unc: Array, unc_weight: Array,
                     temperatures: Sequence[float], units: Tuple[Array, Array],
                     rms: Optional[Array], class_chunk: int = 0,
                     affinity_floor: float = 0.0) -> Array:
  """V [N_c, N, L, C] = sum over tau of F_tau / max(rms_tau, 1e-4) (rms None: plain sum), the
  temperatures accumulated one at a time (combine_temperatures(raw_forces(...)) in less memory)."""
  temps = jnp.asarray(temperatures, jnp.promote_types(phi_gen.dtype, jnp.float32))
  divisors = jnp.ones_like(temps) if rms is None else jnp.maximum(rms, RMS_FLOOR).astype(temps.dtype)
  def field(force, x):
    add = lambda v, tau_and_divisor: (v + force(tau_and_divisor[0]) / tau_and_divisor[1], None)
    return jax.lax.scan(add, jnp.zeros_like(x), (temps, divisors))[0]
  return jnp.swapaxes(_per_class_forces(field, phi_gen, phi_pos, phi_unc, unc_weight, units,
                                        class_chunk, affinity_floor), 1, 2)


def field_rms(square_sums: Array, entries: float) -> Array:
  """Each temperature's RMS over the step from its sums of squares over entries = N_c L N C."""
  # A Python float: the entry count passes 2^31 at the released pixel batches (an int would not
  # fit JAX's int32).
  return jnp.sqrt(square_sums / float(entries))


def combine_temperatures(forces: Array, rms: Optional[Array]) -> Array:
  """V [N_c, N, L, C] = sum over tau of F_tau / max(rms_tau, 1e-4) (rms None: plain sum)."""
  if rms is not None:
    forces = forces / jnp.maximum(rms, RMS_FLOOR)[:, None, None, None]
  return jnp.swapaxes(jnp.sum(forces, axis=1), 1, 2)


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
  args = (phi_gen, phi_pos, phi_unc, unc_weight)
  stats = distance_statistics(*args, class_chunk) if normalize_distances else None
  units = field_units(stats, phi_gen.shape[-1])
  f, square_sums = raw_forces(*args, temperatures, units, class_chunk, affinity_floor)
  rms = field_rms(square_sums, math.prod(phi_gen.shape))
  return combine_temperatures(f, rms if normalize_drift else None), units[1], rms


def drifting_mse(phi_x: Array, v: Array, scale: Array) -> Array:
  """mean((phi/s - sg(phi/s + V))^2) over all entries; its value is mean(V^2), its gradient -2V/(s size)."""
  phi_n = phi_x.astype(v.dtype) / jax.lax.stop_gradient(scale)
  target = jax.lax.stop_gradient(phi_n + v)
  return jnp.mean(jnp.square(phi_n - target))
