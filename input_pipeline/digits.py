"""scikit-learn's digits: 1797 real 8x8 grayscale images of 10 classes, shipped inside the package.

Pixels 0..16 are mapped to [-1, 1]. A fixed seeded split keeps HELD_OUT examples for evaluation.
"""
import numpy as np

HELD_OUT = 297
SPLIT_SEED = 0


def load(split: str):
  """Returns {"x": float32 [N, 8, 8, 1] in [-1, 1], "label": int32 [N]} for split train|eval."""
  from sklearn.datasets import load_digits
  d = load_digits()
  x = (d.images.astype(np.float32) / 16.0) * 2.0 - 1.0
  order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
  idx = {"train": order[HELD_OUT:], "eval": order[:HELD_OUT]}.get(split)
  if idx is None:
    raise ValueError(f"digits split {split!r}: allowed values are 'train' and 'eval'.")
  return {"x": x[idx][..., None], "label": d.target[idx].astype(np.int32)}
