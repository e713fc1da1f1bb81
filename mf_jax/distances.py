"""Sample-based distances between distributions, for tests and small-data evaluation.

All take two sample sets of shape [N, D] and [M, D] (flattened beyond the first axis).
"""
import numpy as np


def _flat(a):
  a = np.asarray(a, np.float64)
  return a.reshape(a.shape[0], -1)


def energy_distance(x, y) -> float:
  """2 E|X - Y| - E|X - X'| - E|Y - Y'| (V-statistic), zero iff the laws agree."""
  x, y = _flat(x), _flat(y)
  def mean_dist(a, b):
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T
    return np.sqrt(np.maximum(sq, 0)).mean()
  return float(2 * mean_dist(x, y) - mean_dist(x, x) - mean_dist(y, y))


def sliced_wasserstein(x, y, num_projections: int = 256, seed: int = 0) -> float:
  """Mean 1-Wasserstein distance of random 1-D projections (equal sample counts required)."""
  x, y = _flat(x), _flat(y)
  if len(x) != len(y):
    raise ValueError(f"sliced_wasserstein needs equal sample counts, got {len(x)} and {len(y)}.")
  dirs = np.random.default_rng(seed).normal(size=(x.shape[1], num_projections))
  dirs /= np.linalg.norm(dirs, axis=0, keepdims=True)
  return float(np.abs(np.sort(x @ dirs, 0) - np.sort(y @ dirs, 0)).mean())
