"""The Drifting Models objective (Deng et al. 2026, REFERENCE.md section 2) as pure JAX functions.

A one-step generator x = f(e, alpha, class) is trained so that its samples follow a drifting field V
that vanishes when the generated distribution q equals the data distribution p:

  V(x) = V+(x) - V-(x),  V+-(x) = E[k(x, y) (y - x)] / Z over y ~ p (y+) or y ~ q (y-),
  k(x, y) = exp(-||x - y|| / tau)   (plain, not squared, L2 distance).

Batch form (for N generated x against P positives y+ and M negatives y-):
  logits_ij = -||x_i - y_j|| / tau over the columns y = [y+, y-], self pairs (x_i as its own negative)
  set to -inf; A = sqrt(softmax over y (each row) * softmax over x (each column));
  W+ = A+ * rowsum(A-), W- = A- * rowsum(A+);  V = W+ y+ - W- y-.
Writing K = exp(logits), Z_i = sum_j K_ij (row) and C_j = sum_i K_ij (column), A_ij = K_ij / sqrt(Z_i C_j).
With the column-normalised kernel k~_ij = K_ij / sqrt(C_j), Z~+-_i its row sums over y+ or y-, and
V~+-_i = sum_j k~_ij (y_j - x_i) / Z~+-_i the mean-shift vectors,
  V_i = (Z~+_i Z~-_i / Z_i) (V~+_i - V~-_i),
because rowsum(W+) = rowsum(W-) = Z~+ Z~- / Z, so the x_i terms cancel. V is thus the mean-shift
difference V+ - V- times a positive per-sample factor; swapping y+ and y- negates it exactly.

Weighted columns: a weight w_ij >= 0 on column j acts as w copies of that sample: A_ij =
w_ij K_ij / sqrt(Z_i C_j) with Z_i = sum_j w_ij K_ij (C_j stays unweighted, as copies leave it alone).
Guidance adds N_unc real samples of other classes as extra negatives with w = (alpha - 1)(N_neg - 1)
/ N_unc, so that the negatives are (q + (alpha - 1) p_uncond) / alpha for the N_neg - 1 generated ones.

Feature spaces: a feature function maps samples [B, ...] to named feature sets [B, L, C] (L vectors
of C channels per sample, e.g. spatial locations). Per set, distances are divided by their mean over
all (x, y) pairs (self pairs excluded, guidance negatives weighted by w), i.e. the features are
scaled by S = mean_dist / sqrt(C) to a mean pairwise distance of sqrt(C), and the temperature is
relative to that mean (logit = -(dist / S) / (tau sqrt(C))). Each location l gets its own field.
For each tau the field is rescaled to unit RMS over the class group (all N, L, C entries), and the
rescaled fields are summed. S and everything inside V are under stop-gradient.

Loss, per class and feature set: mean over [N, L, C] of (phi(x)/S - sg(phi(x)/S + V))^2, which equals
mean_i ||V_i||^2 / (L C); it is summed over feature sets and averaged over classes. Its value stays
near a constant once V is normalised; the raw field RMS (metric `drift_rms/...`) is what shrinks.
"""
import math
from typing import Callable, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections

Array = jax.Array
GeneratorFn = Callable[[Array, Array, Array], Array]
FeatureFn = Callable[[Array], Mapping[str, Array]]
ALPHA_DISTRIBUTIONS = ("uniform", "power")


def default_config() -> ml_collections.ConfigDict:
  """The `drifting` config section with the paper's ablation recipe as defaults."""
  return ml_collections.ConfigDict(dict(
      temperatures=(0.02, 0.05, 0.2),
      normalize_distances=True,   # Mean pairwise distance -> sqrt(C), tau relative to it.
      normalize_drift=True,       # Each tau's field rescaled to unit RMS before summing.
      num_neg=64,                 # Generated samples per class (N_neg); they are also the negatives.
      num_unc=16,                 # Guidance negatives per class (N_unc); 0 turns guidance off.
      alpha_min=1.0,              # Guidance scale alpha, drawn per class or per sample.
      alpha_max=4.0,
      alpha_distribution="uniform",  # "uniform" or "power": p(alpha) ~ alpha^-alpha_power.
      alpha_power=1.0,
      alpha_per_class=True,       # One alpha per class group (see sample_alpha).
      noise_shape=(),             # Generator input shape per sample; () means the sample shape.
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
  if config.alpha_distribution not in ALPHA_DISTRIBUTIONS:
    raise ValueError(f"drifting.alpha_distribution={config.alpha_distribution!r}: allowed values "
                     f"are {ALPHA_DISTRIBUTIONS}.")


def pairwise_distance(a: Array, b: Array) -> Array:
  """Euclidean distances [..., N, M] between a [..., N, C] and b [..., M, C] (matmul form)."""
  # Distances are translation invariant; centring first limits float32 cancellation in |a|^2 + |b|^2
  # - 2ab when the features share a large offset.
  center = jnp.mean(b, axis=-2, keepdims=True)
  a, b = a - center, b - center
  sq = (jnp.sum(a * a, -1)[..., :, None] + jnp.sum(b * b, -1)[..., None, :]
        - 2.0 * jnp.einsum("...nc,...mc->...nm", a, b))
  return jnp.sqrt(jnp.maximum(sq, 0.0))


def _field_from_logits(logits: Array, log_w: Array, y_pos: Array, y_neg: Array) -> Array:
  """V [N, C] from logits [N, P + M] (masked entries -inf) and log column weights [N, P + M]."""
  p = y_pos.shape[0]
  log_row = jax.nn.logsumexp(logits + log_w, axis=1, keepdims=True)
  log_col = jax.nn.logsumexp(logits, axis=0, keepdims=True)
  # A column that is masked in every row (a lone self pair) has no mass; keep it out of the NaNs.
  log_col = jnp.where(jnp.isfinite(log_col), log_col, 0.0)
  a = jnp.exp(logits + log_w - 0.5 * (log_row + log_col))
  a_pos, a_neg = a[:, :p], a[:, p:]
  w_pos = a_pos * jnp.sum(a_neg, axis=1, keepdims=True)
  w_neg = a_neg * jnp.sum(a_pos, axis=1, keepdims=True)
  return w_pos @ y_pos - w_neg @ y_neg


def _self_mask(n: int, num_pos: int, num_cols: int) -> Array:
  """[N, P + M] True where column j is x_i itself (negatives start with the generated batch)."""
  return jnp.arange(num_cols)[None, :] == jnp.arange(n)[:, None] + num_pos


def _log_weights(n: int, num_pos: int, num_neg: int, neg_weights: Optional[Array]) -> Array:
  """Log column weights [N, P + M]: 0 for positives, log(w) (maybe -inf) for negatives."""
  if neg_weights is None:
    return jnp.zeros((n, num_pos + num_neg))
  w = jnp.broadcast_to(jnp.asarray(neg_weights, jnp.float32), (n, num_neg))
  return jnp.concatenate([jnp.zeros((n, num_pos)), jnp.log(w)], axis=1)


def drift_field(x: Array, y_pos: Array, y_neg: Array, tau: float, *, mask_self: bool = False,
                neg_weights: Optional[Array] = None) -> Array:
  """The batch-form drifting field V [N, C] for x [N, C], y_pos [P, C], y_neg [M, C].

  Args:
    tau: kernel temperature, in the units of the distances.
    mask_self: the first N negatives are x itself; their self pairs get no weight.
    neg_weights: optional weights >= 0 for the negatives, [M] or [N, M]; w acts as w copies.
  """
  x, y_pos, y_neg = jax.lax.stop_gradient((x, y_pos, y_neg))
  n, p, m = x.shape[0], y_pos.shape[0], y_neg.shape[0]
  if mask_self and m < n:
    raise ValueError(f"mask_self needs y_neg to start with x: got {m} negatives for {n} samples.")
  logits = -pairwise_distance(x, jnp.concatenate([y_pos, y_neg])) / tau
  if mask_self:
    logits = jnp.where(_self_mask(n, p, p + m), -jnp.inf, logits)
  return _field_from_logits(logits, _log_weights(n, p, m, neg_weights), y_pos, y_neg)


def feature_set_drift(phi_x: Array, phi_pos: Array, phi_unc: Array, unc_weight: Array,
                      temperatures: Sequence[float], normalize_distances: bool = True,
                      normalize_drift: bool = True) -> Tuple[Array, Array, Array]:
  """Multi-temperature field for one class group and one feature set (all under stop-gradient).

  Args:
    phi_x: generated features [N, L, C]; they are also the negatives (self pairs masked).
    phi_pos: positive (real, same class) features [P, L, C].
    phi_unc: guidance negatives [U, L, C] (U may be 0).
    unc_weight: weight of each guidance negative for each generated sample, [] or [N].
  Returns:
    (V [N, L, C] in units of the normalised features phi / S, S [], raw RMS per tau [len(taus)]).
  """
  phi_x, phi_pos, phi_unc = jax.lax.stop_gradient((phi_x, phi_pos, phi_unc))
  n, num_loc, ch = phi_x.shape
  p, u = phi_pos.shape[0], phi_unc.shape[0]
  to_lnc = lambda t: jnp.swapaxes(t, 0, 1).astype(jnp.float32)
  x, y_pos = to_lnc(phi_x), to_lnc(phi_pos)
  y_neg = jnp.concatenate([x, to_lnc(phi_unc)], axis=1)  # [L, N + U, C]
  dist = pairwise_distance(x, jnp.concatenate([y_pos, y_neg], axis=1))  # [L, N, P + N + U]

  is_self = _self_mask(n, p, p + n + u)
  w_unc = jnp.broadcast_to(jnp.reshape(unc_weight, (-1, 1)).astype(jnp.float32), (n, u))
  weights = jnp.concatenate([jnp.ones((n, p + n)), w_unc], axis=1)
  weights = jnp.where(is_self, 0.0, weights)
  if normalize_distances:
    mean_dist = jnp.sum(dist * weights) / (num_loc * jnp.sum(weights))
    mean_dist = jnp.maximum(mean_dist, 1e-12)
  else:
    mean_dist = jnp.ones(())
  scale = mean_dist / math.sqrt(ch) if normalize_distances else jnp.ones(())
  log_w = jnp.log(jnp.where(is_self, 1.0, weights))[:, p:]  # Negatives' log weights; self is masked.
  log_w = jnp.concatenate([jnp.zeros((n, p)), log_w], axis=1)

  field = jax.vmap(_field_from_logits, in_axes=(0, None, 0, 0))  # Over locations.

  def one_temperature(tau):
    logits = jnp.where(is_self, -jnp.inf, -dist / (tau * mean_dist))
    v = field(logits, log_w, y_pos, y_neg) / scale  # V is linear in y: normalised-feature units.
    return v, jnp.sqrt(jnp.mean(jnp.square(v)))

  # One traced body for all temperatures keeps the compiled program small with many feature sets.
  v_all, rms = jax.vmap(one_temperature)(jnp.asarray(temperatures, jnp.float32))
  if normalize_drift:
    v_all = v_all / jnp.maximum(rms, 1e-12)[:, None, None, None]
  total = jnp.sum(v_all, axis=0)
  return jnp.swapaxes(total, 0, 1), scale, rms


def drifting_mse(phi_x: Array, v: Array, scale: Array) -> Array:
  """mean((phi/S - sg(phi/S + V))^2) over all entries; its value is mean(V^2), its gradient -2V/size."""
  phi_n = phi_x.astype(jnp.float32) / jax.lax.stop_gradient(scale)
  target = jax.lax.stop_gradient(phi_n + v)
  return jnp.mean(jnp.square(phi_n - target))


def guidance_weight(alpha: Array, num_neg: int, num_unc: int) -> Array:
  """w = (alpha - 1)(N_neg - 1) / N_unc: the weight of each guidance negative."""
  return (alpha - 1.0) * (num_neg - 1) / max(num_unc, 1)


def sample_alpha(key: Array, num_classes: int, config) -> Array:
  """Guidance scales [N_c, N_neg] in [alpha_min, alpha_max]; all ones without guidance.

  With alpha_per_class (default) the N_neg samples of a class share one alpha, so the generated
  negatives of a class come from one distribution q_alpha and the weights keep their meaning as
  copies of the guidance negatives; otherwise each sample draws its own and its row uses its own w.
  "uniform" draws alpha uniformly; "power" draws p(alpha) ~ alpha^-alpha_power (log-uniform at 1),
  which puts more samples at small alpha.
  """
  shape = (num_classes, 1 if config.alpha_per_class else config.num_neg)
  if config.num_unc == 0:
    return jnp.ones((num_classes, config.num_neg))
  lo, hi = float(config.alpha_min), float(config.alpha_max)
  uniform = jax.random.uniform(key, shape)
  if config.alpha_distribution == "uniform":
    alpha = lo + (hi - lo) * uniform
  elif config.alpha_distribution == "power":
    k = float(config.alpha_power)
    if abs(k - 1.0) < 1e-9:
      alpha = lo * jnp.exp(uniform * math.log(hi / lo))
    else:  # Inverse CDF of alpha^-k on [lo, hi].
      alpha = (lo ** (1 - k) + uniform * (hi ** (1 - k) - lo ** (1 - k))) ** (1.0 / (1 - k))
  else:
    raise ValueError(f"drifting.alpha_distribution={config.alpha_distribution!r}: use one of "
                     f"{ALPHA_DISTRIBUTIONS}.")
  return jnp.broadcast_to(alpha, (num_classes, config.num_neg))


def other_class_samples(key: Array, real_by_class: Array, num_unc: int) -> Array:
  """For each class c, num_unc real samples of uniformly random other classes in the batch.

  real_by_class [N_c, N_pos, ...] -> [N_c, num_unc, ...]. Needs N_c >= 2.
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
                  uncond_real: Optional[Array] = None) -> Tuple[Array, Mapping[str, Array]]:
  """The drifting training loss for N_c classes at once.

  Args:
    generator_fn: (noise [B, *noise_shape], alpha [B], labels [B]) -> samples [B, *sample_shape].
    real_by_class: positives [N_c, N_pos, *sample_shape], row c of class labels[c].
    labels: class ids [N_c] (int).
    key: PRNG key for noise, alpha and guidance negatives.
    config: the `drifting` section (see default_config).
    feature_fn: samples [B, ...] -> {name: [B, L, C]}; applied to generated and real samples alike.
    uncond_real: optional guidance negatives [N_c, N_unc, *sample_shape]; default: real samples of
      other classes of this batch.
  Returns:
    (loss, metrics). Generated samples are N_c * N_neg in one generator call, class-major.
  """
  n_c = real_by_class.shape[0]
  sample_shape = tuple(real_by_class.shape[2:])
  n_neg, n_unc = int(config.num_neg), int(config.num_unc)
  noise_shape = tuple(config.noise_shape) or sample_shape
  k_noise, k_alpha, k_unc = jax.random.split(key, 3)

  alpha = sample_alpha(k_alpha, n_c, config)  # [N_c, N_neg]
  noise = jax.random.normal(k_noise, (n_c * n_neg,) + noise_shape)
  generated = generator_fn(noise, alpha.reshape(-1), jnp.repeat(labels, n_neg))
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
  unc_weight = guidance_weight(alpha, n_neg, n_unc)  # [N_c, N_neg]

  temps = tuple(float(t) for t in config.temperatures)
  def per_class(phi_x, phi_real, w):
    phi_pos = phi_real[:n_pos]
    phi_unc = phi_real[n_pos:]  # Empty without guidance.
    v, scale, rms = feature_set_drift(phi_x, phi_pos, phi_unc, w, temps,
                                      config.normalize_distances, config.normalize_drift)
    return drifting_mse(phi_x, v, scale), scale, rms

  loss, metrics = jnp.zeros(()), {}
  rms_sum = jnp.zeros((len(temps),))
  for name, phi_x in gen_feats.items():
    set_loss, scale, rms = jax.vmap(per_class)(phi_x, real_feats[name], unc_weight)
    loss = loss + jnp.mean(set_loss)
    rms_sum = rms_sum + jnp.mean(rms, axis=0)
    metrics[f"loss/{name}"] = jnp.mean(set_loss)
    metrics[f"feature_scale/{name}"] = jnp.mean(scale)
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
