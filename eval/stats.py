"""FID statistics: streaming float64 moments and their merging, Frechet distance, Inception Score.

Moments are kept as (count n, mean mu, centred scatter M2 = sum (x - mu)(x - mu)^T), merged with
Chan et al.'s pairwise rule
  n = na + nb,  mu = mu_a + d nb / n,  M2 = M2a + M2b + d d^T na nb / n,   d = mu_b - mu_a,
which, unlike sum / sum-of-outer-products, does not lose digits when |mean| >> std. Covariance is
M2 / (n - 1) (unbiased, as numpy.cov and every FID implementation use).

Per-device moments come from `sharded_moments` (jit + shard_map over a mesh axis, merged with psum);
moments from several hosts merge on the host with `StatsAccumulator.merge`.
"""
import functools
import os
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
import scipy.special
from jax.sharding import Mesh, PartitionSpec as P


class StatsAccumulator:
  """Streaming mean / covariance of [N, D] features in float64.

  acc.update(features)            # any batch size, numpy or jax
  acc.update_moments(n, mu, m2)   # e.g. from `sharded_moments` or another host
  acc.merge(other)                # combine two accumulators
  mu, sigma = acc.mean, acc.cov   # float64, [D] and [D, D]

  Rows are buffered and folded in blocks of `block_rows`: each fold costs O(D^2) on top of the
  O(rows D^2) product, which for D = 2048 and small batches would dominate the Inception time.
  """

  def __init__(self, dim: int, block_rows: int = 1024):
    self.dim, self.block_rows = int(dim), int(block_rows)
    self._count = 0
    self._mean = np.zeros(self.dim, np.float64)
    self._m2 = np.zeros((self.dim, self.dim), np.float64)
    self._pending, self._pending_rows = [], 0

  def update(self, features) -> "StatsAccumulator":
    x = np.asarray(features)
    if x.ndim != 2 or x.shape[1] != self.dim:
      raise ValueError(f"StatsAccumulator(dim={self.dim}) got features of shape {x.shape}; "
                       f"expected [N, {self.dim}].")
    self._pending.append(np.array(x, np.float64))  # a copy: callers may reuse their buffer
    self._pending_rows += len(x)
    if self._pending_rows >= self.block_rows:
      self._flush()
    return self

  def _flush(self) -> None:
    if not self._pending_rows:
      return
    x = np.concatenate(self._pending)
    self._pending, self._pending_rows = [], 0
    mu = x.mean(axis=0)
    centred = x - mu
    self.update_moments(len(x), mu, centred.T @ centred)

  def update_moments(self, count, mean, m2) -> "StatsAccumulator":
    count = int(count)
    mean = np.asarray(mean, np.float64)
    m2 = np.asarray(m2, np.float64)
    if mean.shape != (self.dim,) or m2.shape != (self.dim, self.dim):
      raise ValueError(f"Moments of shapes {mean.shape}, {m2.shape} do not match dim={self.dim}.")
    if count == 0:
      return self
    total = self._count + count
    delta = mean - self._mean
    self._m2 += m2
    self._m2 += np.outer(delta, delta * (self._count * count / total))
    self._mean += delta * (count / total)
    self._count = total
    return self

  def merge(self, other: "StatsAccumulator") -> "StatsAccumulator":
    return self.update_moments(*other.moments())

  def moments(self) -> Tuple[int, np.ndarray, np.ndarray]:
    """(count, mean, centred scatter M2): what to send to another host."""
    self._flush()
    return self._count, self._mean.copy(), self._m2.copy()

  @property
  def count(self) -> int:
    return self._count + self._pending_rows

  @property
  def mean(self) -> np.ndarray:
    self._flush()
    return self._mean.copy()

  @property
  def cov(self) -> np.ndarray:
    self._flush()
    if self._count < 2:
      raise ValueError(f"Covariance needs at least 2 samples, have {self._count}.")
    return self._m2 / (self._count - 1)


def _split_float64(x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  # float64 as a float32 pair (hi + lo, ~48 significant bits): collectives need no x64 support.
  hi = x.astype(np.float32)
  return hi, (x - hi.astype(np.float64)).astype(np.float32)


def merge_across_processes(acc: StatsAccumulator) -> StatsAccumulator:
  """Every JAX process's accumulator merged (all processes get the same result)."""
  if jax.process_count() == 1:
    return acc
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  count, mean, m2 = acc.moments()
  gathered = multihost_utils.process_allgather(
      (np.asarray(count, np.int32),) + _split_float64(mean) + _split_float64(m2))
  counts, mean_hi, mean_lo, m2_hi, m2_lo = (np.asarray(g, np.float64) for g in gathered)
  merged = StatsAccumulator(acc.dim)
  for i in range(len(counts)):
    merged.update_moments(int(counts[i]), mean_hi[i] + mean_lo[i], m2_hi[i] + m2_lo[i])
  return merged


@functools.lru_cache(maxsize=None)
def _sharded_moments_fn(mesh: Mesh, axis: str):
  """One jitted function per (mesh, axis), so repeated evaluation batches reuse its compilation."""

  def local(x, w):
    dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
    x, w = x.astype(dtype), w.astype(dtype)
    n_i = jnp.sum(w)
    mu_i = jnp.sum(x * w[:, None], axis=0) / jnp.maximum(n_i, 1)
    c = (x - mu_i) * w[:, None]
    m2_i = jnp.dot(c.T, c, precision=jax.lax.Precision.HIGHEST)
    total = jax.lax.psum(n_i, axis)
    mu = jax.lax.psum(n_i * mu_i, axis) / total
    d = mu_i - mu
    m2 = jax.lax.psum(m2_i + n_i * jnp.outer(d, d), axis)
    return total, mu, m2

  return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(axis), P(axis)),
                               out_specs=(P(), P(), P())))


def sharded_moments(features: jax.Array, mesh: Mesh, axis: str = "data",
                    weights: Optional[jax.Array] = None) -> Tuple[int, np.ndarray, np.ndarray]:
  """(count, mean, M2) of [N, D] features split along `axis` of `mesh`, merged with psum.

  Each device computes its local count, mean and centred scatter, then the global moments follow
  from the exact decomposition M2 = sum_i [M2_i + n_i (mu_i - mu)(mu_i - mu)^T]. weights: optional
  [N] 0/1 mask (e.g. padding of the last batch); masked rows do not count. Runs in the input's float
  dtype (float64 when jax x64 is enabled); feed the result to StatsAccumulator.update_moments.
  With D = 2048 each call moves a 16 MB matrix to the host: call it on large chunks.
  """
  if weights is None:
    weights = jnp.ones(features.shape[:1], jnp.float32)
  count, mean, m2 = _sharded_moments_fn(mesh, axis)(features, weights)
  return int(np.round(float(count))), np.asarray(mean, np.float64), np.asarray(m2, np.float64)


def _clip_roundoff(eigenvalues: np.ndarray) -> np.ndarray:
  # eigh is accurate to about n * eps * max|lambda|; below that an eigenvalue is round-off of a true
  # zero, and its square root (~1e-8 of the scale) would add up over a large null space.
  tol = len(eigenvalues) * np.finfo(np.float64).eps * np.max(np.abs(eigenvalues), initial=0.0)
  return np.where(eigenvalues > tol, eigenvalues, 0.0)


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
  w, v = np.linalg.eigh((a + a.T) / 2)
  return (v * np.sqrt(_clip_roundoff(w))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray, method: str = "eigh") -> float:
  """tr sqrt(sigma1 sigma2) for PSD sigma1, sigma2.

  "eigh": with s1 = F F^T (Cholesky, or the PSD square root when s1 is singular), s1 s2 is similar
    to the PSD matrix F^T s2 F, so the trace is the sum of the square roots of its (round-off
    clipped) eigenvalues: exact for rank-deficient covariances, no complex parts, and several
    times faster than sqrtm at D = 2048.
  "sqrtm": scipy.linalg.sqrtm of the product with the usual fallback: if the result is not finite,
    add eps * I to both covariances; the real part is taken (the imaginary part is round-off).
  """
  if method == "eigh":
    try:
      # Any factor F with F F^T = sigma1 works (F^T s2 F is similar to s1 s2); Cholesky is cheaper
      # than the symmetric square root and exists whenever sigma1 is positive definite.
      factor = np.linalg.cholesky(sigma1)
    except np.linalg.LinAlgError:  # rank-deficient: the PSD square root always exists
      factor = _sqrt_psd(sigma1)
    product = factor.T @ sigma2 @ factor
    eig = np.linalg.eigvalsh((product + product.T) / 2)
    return float(np.sum(np.sqrt(_clip_roundoff(eig))))
  if method == "sqrtm":
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
      offset = np.eye(len(sigma1)) * 1e-6
      covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    return float(np.trace(np.real(covmean)))
  raise ValueError(f"method={method!r}: expected 'eigh' or 'sqrtm'.")


def frechet_distance(mu1, sigma1, mu2, sigma2, method: str = "eigh") -> float:
  """||mu1 - mu2||^2 + tr(s1) + tr(s2) - 2 tr sqrt(s1 s2), computed in float64."""
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  s1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  s2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
    raise ValueError(f"Frechet distance needs matching shapes: mu {mu1.shape} vs {mu2.shape}, "
                     f"sigma {s1.shape} vs {s2.shape}. Were the statistics made with the same "
                     "feature function?")
  diff = mu1 - mu2
  value = diff @ diff + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt_product(s1, s2, method)
  # Round-off can push an exact 0 slightly negative.
  return float(max(value, 0.0))


def inception_score(logits, splits: int = 10) -> Tuple[float, float]:
  """Inception Score exp(E_x KL(p(y|x) || p(y))) from [N, K] logits -> (mean, std) over splits.

  p(y) is the mean prediction within each split, as in the original code (10 splits of 50,000).
  Use the unbiased logits (pool @ W, no bias) to match the TF reference and ADM's evaluator.
  """
  logits = np.asarray(logits, np.float64)
  if logits.ndim != 2 or len(logits) < splits:
    raise ValueError(f"inception_score needs [N >= splits={splits}, K] logits, got {logits.shape}.")
  log_p = logits - scipy.special.logsumexp(logits, axis=1, keepdims=True)
  scores = []
  for part in np.array_split(log_p, splits):
    log_marginal = scipy.special.logsumexp(part, axis=0) - np.log(len(part))
    kl = np.sum(np.exp(part) * (part - log_marginal), axis=1)
    scores.append(np.exp(kl.mean()))
  return float(np.mean(scores)), float(np.std(scores))


def save_stats(path: str, mu, sigma, count: Optional[int] = None, **extra) -> None:
  """Writes mu [D] and sigma [D, D] (float64) to an .npz, with optional count and metadata."""
  fields = dict(mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64), **extra)
  if count is not None:
    fields["count"] = np.asarray(count, np.int64)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  np.savez(path, **fields)


def load_stats(path: str) -> Tuple[np.ndarray, np.ndarray]:
  """mu, sigma from an .npz of statistics or an ADM reference batch (which also holds arr_0)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Reference statistics {path!r} not found. Make them with "
                            "`python -m eval.fid --images=DIR_OR_NPZ --write_stats=OUT.npz`.")
  with np.load(path) as data:
    if "mu" in data.files and "sigma" in data.files:
      return np.asarray(data["mu"], np.float64), np.asarray(data["sigma"], np.float64)
    raise ValueError(f"{path!r} holds {sorted(data.keys())}, no 'mu' and 'sigma'. An images-only "
                     "batch needs its statistics computed first (--images ... --write_stats).")


def has_stats(path: str) -> bool:
  with np.load(path) as data:
    return "mu" in data.files and "sigma" in data.files


def stats_from_features(features) -> Tuple[np.ndarray, np.ndarray]:
  acc = StatsAccumulator(np.asarray(features).shape[1]).update(features)
  return acc.mean, acc.cov

