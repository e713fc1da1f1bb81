"""The golden files under tests/golden/ (written by scripts/make_*_golden.py from official code)."""
import os

import jax
import numpy as np
from flax import traverse_util

from numerics import rel_err

FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")


def load(name: str) -> dict:
  """{key: array} of tests/golden/<name>, read once into memory."""
  with np.load(os.path.join(FOLDER, name)) as f:
    return {k: f[k] for k in f.files}


def subtree(golden: dict, prefix: str) -> dict:
  """The nested tree stored under `prefix/` (keys joined by "/"), e.g. the official parameters."""
  flat = {k[len(prefix) + 1:]: v for k, v in golden.items() if k.startswith(prefix + "/")}
  return traverse_util.unflatten_dict(flat, sep="/")


def assert_gradients_close(got, want, rtol: float) -> None:
  """Whole-tree relative error below rtol, and leaf by leaf relative to the whole tree's scale,
  so no small part can hide in the total."""
  assert rel_err(got, want) < rtol
  scale = np.linalg.norm(np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(want)]))
  flat_got = traverse_util.flatten_dict(jax.device_get(got), sep="/")
  for name, w in traverse_util.flatten_dict(want, sep="/").items():
    assert np.linalg.norm(np.asarray(flat_got[name]) - w) < rtol * scale, name
