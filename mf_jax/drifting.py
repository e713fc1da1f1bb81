"""The Drifting Models objective (Deng et al. 2026, docs/drifting.md) as pure JAX functions.

A one-step generator x = f(e, alpha, class) is trained so that its samples follow a drifting field V
that vanishes when the generated distribution q equals the data distribution p: V moves each
generated sample towards nearby real samples y+ and away from nearby generated samples y-.

Guidance: U real samples of any class (from a bank of recent samples) are extra negatives with
w_unc = (alpha - 1)(N - 1) / U, alpha drawn per class from p(alpha) ~ alpha^-k on [alpha_min,
alpha_max] (k = 0 uniform) and given to the generator as a condition; a fraction of the classes
may get alpha = 1 (no guidance).

The field V and the loss mean((phi/s - sg(phi/s + V))^2) per feature set are in
mf_jax/drifting_field.py; here: the step's draws, its features, and the loss and its gradient, in
one pass (drifting_loss) or accumulated over groups of classes (drifting_value_and_grad).
"""
import functools
import math
from typing import Callable, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp

from mf_jax.drifting_field import (distance_statistics, drifting_mse, feature_set_field,
                                   field_rms, field_units, force_square_sums, normalized_field,
                                   split_classes)
# The `drifting` config section, declared in drifting_config.py.
from mf_jax.drifting_config import default_config, validate_config  # pylint: disable=unused-import

Array = jax.Array
GeneratorFn = Callable[[Array, Array, Array], Array]
FeatureFn = Callable[[Array], Mapping[str, Array]]

RELEASED_AFFINITY_FLOOR = 1e-3  # A_ij >= w_j * this: the released floor 1e-6 on the product.


def accumulation_steps(config, num_devices: int) -> int:
  """Passes of drifting_value_and_grad for the `drifting` section on num_devices (classes split
  evenly over them): classes_per_step / (accum_classes_per_device x num_devices), or 1."""
  per_device = int(config.accum_classes_per_device)
  n_c = int(config.classes_per_step)
  if per_device <= 0 or per_device * num_devices >= n_c:
    return 1
  if n_c % (per_device * num_devices):
    raise ValueError(
        f"drifting.accum_classes_per_device={per_device} x {num_devices} devices must divide "
        f"drifting.classes_per_step={n_c}: choose a divisor of the {n_c / num_devices:g} classes "
        "each device holds, or 0 (one pass).")
  return n_c // (per_device * num_devices)


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


def _step_inputs(real_by_class: Array, labels: Array, key: Array, config,
                 uncond_real: Optional[Array], alpha: Optional[Array]):
  """The step's random draws -> (alpha [N_c], noise [N_c, N_neg, *noise_shape], references
  [N_c, N_pos + N_unc, *sample_shape]: positives, then guidance negatives)."""
  n_c = real_by_class.shape[0]
  n_neg, n_unc = int(config.num_neg), int(config.num_unc)
  noise_shape = tuple(config.noise_shape) or tuple(real_by_class.shape[2:])
  chunk = int(config.class_chunk)
  if chunk and n_c % chunk:
    raise ValueError(f"drifting.class_chunk={chunk} must divide the {n_c} classes per step.")
  k_noise, k_alpha, k_unc = jax.random.split(key, 3)
  if alpha is None:
    alpha = sample_alpha(k_alpha, n_c, config)
  noise = jax.random.normal(k_noise, (n_c * n_neg,) + noise_shape)
  if n_unc == 0:
    return alpha, noise.reshape((n_c, n_neg) + noise_shape), real_by_class
  if uncond_real is None:
    uncond_real = other_class_samples(k_unc, real_by_class, n_unc)
  if uncond_real.shape[:2] != (n_c, n_unc):
    raise ValueError(f"uncond_real has shape {uncond_real.shape}; expected [{n_c}, {n_unc}, ...] "
                     "(N_c, drifting.num_unc).")
  refs = jnp.concatenate([real_by_class, uncond_real.astype(real_by_class.dtype)], axis=1)
  return alpha, noise.reshape((n_c, n_neg) + noise_shape), refs


def _generated_features(generator_fn: GeneratorFn, feature_fn: FeatureFn, noise: Array,
                        alpha: Array, labels: Array, sample_shape) -> Mapping[str, Array]:
  """Features {name: [N_c, N_neg, L, C]} of the samples generated from noise [N_c, N_neg, ...]."""
  n_c, n_neg = noise.shape[:2]
  generated = generator_fn(noise.reshape((n_c * n_neg,) + noise.shape[2:]),
                           jnp.repeat(alpha, n_neg), jnp.repeat(labels, n_neg))
  if generated.shape != (n_c * n_neg,) + tuple(sample_shape):
    raise ValueError(f"generator_fn returned {generated.shape}; expected "
                     f"{(n_c * n_neg,) + tuple(sample_shape)} to match the real samples' shape.")
  return _features(feature_fn, generated, n_c)


def _reference_features(feature_fn: FeatureFn, refs: Array) -> Mapping[str, Array]:
  """Features {name: [N_c, N_pos + N_unc, L, C]} of the real samples refs [N_c, N_pos + N_unc, ...]."""
  # Class-major flat batch: row c of the regrouped features is [positives, guidance negatives] of c.
  flat = jax.lax.stop_gradient(refs).reshape((-1,) + refs.shape[2:])
  return _features(feature_fn, flat, refs.shape[0])


def _field_metrics(scales: Mapping[str, Array], rms: Mapping[str, Array], temps, alpha: Array):
  """feature_scale/<set>, drift_rms/tau<tau> (the mean over sets) and alpha_mean."""
  metrics = {f"feature_scale/{name}": scale for name, scale in scales.items()}
  mean_rms = sum(rms.values()) / len(rms)
  for i, tau in enumerate(temps):
    metrics[f"drift_rms/tau{tau:g}"] = mean_rms[i]
  metrics["alpha_mean"] = jnp.mean(alpha)
  return metrics


def _fields(gen_feats, real_feats, n_pos: int, alpha: Array, config):
  """{name: (V, s)} for every feature set, and the step's metrics (all stop-gradient)."""
  unc_weight = guidance_weight(alpha, int(config.num_neg), int(config.num_unc))  # [N_c]
  temps = tuple(float(t) for t in config.temperatures)
  fields, rms = {}, {}
  for name, phi_x in gen_feats.items():
    phi_real = real_feats[name]
    v, scale, rms[name] = feature_set_field(
        phi_x, phi_real[:, :n_pos], phi_real[:, n_pos:], unc_weight, temps,
        config.normalize_distances, config.normalize_drift, int(config.class_chunk),
        float(config.affinity_floor))
    fields[name] = (v, scale)
  return fields, _field_metrics({k: s for k, (_, s) in fields.items()}, rms, temps, alpha)


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
  alpha, noise, refs = _step_inputs(real_by_class, labels, key, config, uncond_real, alpha)
  real_feats = _reference_features(feature_fn, refs)
  gen_feats = _generated_features(generator_fn, feature_fn, noise, alpha, labels,
                                  real_by_class.shape[2:])
  fields, metrics = _fields(gen_feats, real_feats, real_by_class.shape[1], alpha, config)
  loss = jnp.zeros(())
  for name, (v, scale) in fields.items():
    set_loss = drifting_mse(gen_feats[name], v, scale)
    loss = loss + set_loss
    metrics[f"loss/{name}"] = set_loss
  metrics["loss"] = loss
  return loss, metrics


def drifting_value_and_grad(generator_apply: Callable, params, real_by_class: Array,
                            labels: Array, key: Array, config,
                            feature_fn: FeatureFn = raw_features,
                            uncond_real: Optional[Array] = None, *, alpha: Optional[Array] = None,
                            accum_steps: int = 1):
  """((loss, metrics), grads) of drifting_loss w.r.t. params, in accum_steps groups of classes.

  generator_apply(params, noise, alpha, labels) -> samples; the other arguments are drifting_loss's.
  With accum_steps = k > 1 the N_c classes go through the generator and the feature encoder in k
  groups of N_c / k (split_classes: with the classes split over devices, every device holds
  N_c / (k D) of each group), so memory holds one group's activations, features and fields. The
  result is the one-pass step's, with the same draws, not an approximation. The field's
  normalisers are statistics of all classes, so the groups are streamed three times: (1) without
  gradients, the distance sums that give D per feature set; (2) without gradients, each
  temperature's sum of squared forces, whose step RMS normalises it; (3) each group's features
  with gradients, its field V from D and the RMS, and the gradient of its share (1/k) of the loss.
  Cost: two more forwards of the generator and of the encoder (on generated and real samples)
  than one pass, in exchange for a memory that does not grow with the classes per device.
  """
  n_c = real_by_class.shape[0]
  if accum_steps <= 1:
    loss_fn = lambda p: drifting_loss(functools.partial(generator_apply, p), real_by_class, labels,
                                      key, config, feature_fn, uncond_real, alpha=alpha)
    return jax.value_and_grad(loss_fn, has_aux=True)(params)
  if n_c % accum_steps:
    raise ValueError(f"{accum_steps} gradient-accumulation passes must divide the {n_c} classes "
                     "per step (drifting.classes_per_step).")
  sample_shape, n_pos = real_by_class.shape[2:], real_by_class.shape[1]
  temps = tuple(float(t) for t in config.temperatures)
  chunk, floor = int(config.class_chunk), float(config.affinity_floor)
  alpha, noise, refs = _step_inputs(real_by_class, labels, key, config, uncond_real, alpha)
  unc_weight = guidance_weight(alpha, int(config.num_neg), int(config.num_unc))
  groups = split_classes((noise, alpha, labels, refs, unc_weight), n_c // accum_steps)
  frozen = jax.lax.stop_gradient(params)

  def group_sets(p, noise, alpha, labels, refs, w):
    """{set: (phi_gen, phi_pos, phi_unc, w)} of one group of classes."""
    gen = _generated_features(functools.partial(generator_apply, p), feature_fn, noise, alpha,
                              labels, sample_shape)
    real = _reference_features(feature_fn, refs)
    return {name: (gen[name], real[name][:, :n_pos], real[name][:, n_pos:], w) for name in gen}

  def sum_over_groups(fn):
    """sum over the groups of fn(group) -> {set: array}, one group at a time."""
    first = jax.eval_shape(fn, *jax.tree_util.tree_map(lambda t: t[0], groups))
    add = lambda total, group: (jax.tree_util.tree_map(jnp.add, total, fn(*group)), None)
    return jax.lax.scan(add, jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), first),
                        groups)[0]

  shapes = jax.eval_shape(lambda *g: group_sets(frozen, *g),
                          *jax.tree_util.tree_map(lambda t: t[0], groups))
  # Pass 1: the mean distance D of each feature set.
  if config.normalize_distances:
    stats = sum_over_groups(lambda *g: {name: distance_statistics(*a, chunk)
                                        for name, a in group_sets(frozen, *g).items()})
  units = {name: field_units(stats[name] if config.normalize_distances else None, s[0].shape[-1])
           for name, s in shapes.items()}
  # Pass 2: each temperature's field RMS over the step.
  square_sums = sum_over_groups(lambda *g: {
      name: force_square_sums(*a, temps, units[name], chunk, floor)
      for name, a in group_sets(frozen, *g).items()})
  rms = {name: field_rms(square_sums[name], n_c * math.prod(s[0].shape[1:]))
         for name, s in shapes.items()}

  # Pass 3: the group's share of the loss and of its gradient.
  def group_loss(p, *group):
    set_losses = {}
    for name, (phi_gen, phi_pos, phi_unc, w) in group_sets(p, *group).items():
      v = normalized_field(phi_gen, phi_pos, phi_unc, w, temps, units[name],
                           rms[name] if config.normalize_drift else None, chunk, floor)
      set_losses[name] = drifting_mse(phi_gen, v, units[name][1]) / accum_steps
    return sum(set_losses.values()), set_losses

  def accumulate(totals, group):
    (_, set_losses), grads = jax.value_and_grad(group_loss, has_aux=True)(params, *group)
    return jax.tree_util.tree_map(jnp.add, totals, (grads, set_losses)), None
  zeros = lambda tree: jax.tree_util.tree_map(jnp.zeros_like, tree)
  (grads, set_losses), _ = jax.lax.scan(
      accumulate, (zeros(params), {name: jnp.zeros(()) for name in shapes}), groups)
  metrics = _field_metrics({name: u[1] for name, u in units.items()}, rms, temps, alpha)
  metrics.update({f"loss/{name}": l for name, l in set_losses.items()})
  metrics["loss"] = sum(set_losses.values())
  return (metrics["loss"], metrics), grads
