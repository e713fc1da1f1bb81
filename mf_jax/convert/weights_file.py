"""Weights files: a frozen module's parameters as one flat float32 .npz, read without torch.

Keys are the parameter paths below `params` joined by "/" (`stage0_block0/dwconv/kernel`). The
converter formats that write such files (ConvNeXt-V2, LPIPS-VGG16) save them here, and the
trainer's frozen-network loader reads them through the formats' `load_variables` / `file_problems`,
which check every name and shape against the module before reading an array.
"""
from typing import Mapping, Tuple

import numpy as np
from flax import traverse_util

from mf_jax.convert import engine, readers

Shapes = Mapping[str, Tuple[int, ...]]


def save(path: str, variables) -> None:
  """Writes variables {"params": tree} as a weights file."""
  flat = traverse_util.flatten_dict(variables["params"], sep="/")
  with open(path, "wb") as f:
    np.savez(f, **{k: np.asarray(v, np.float32) for k, v in flat.items()})


def fit_problems(shapes: Shapes, expected: Shapes, what: str) -> str:
  """'' when `shapes` are exactly `expected` (engine.abstract_params of the module), else every
  unmapped, misshaped and missing name in one line, saying the weights do not fit `what`."""
  problems = engine.shape_problems(shapes, expected)
  if not problems:
    return ""
  return (f"the weights do not fit {what}; {len(problems)} problem(s): " + "; ".join(problems[:8])
          + (f"; ... ({len(problems) - 8} more)" if len(problems) > 8 else ""))


def file_problems(path: str, expected: Shapes, what: str) -> str:
  """'' when the file at `path` fits, else what is wrong (from the .npy headers alone)."""
  import zipfile  # pylint: disable=g-import-not-at-top
  try:
    return fit_problems(readers.npz_shapes(path), expected, what)
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    return f"not a weights file ({e})"


def load(path: str, expected: Shapes, what: str, fix: str):
  """The file at `path` as variables {"params": tree} (host float32 arrays); SourceError naming
  every missing, unexpected and misshaped parameter, with `fix`."""
  problems = fit_problems(readers.npz_shapes(path), expected, what)
  if problems:
    raise engine.SourceError(path, problems, fix)
  flat = {k: v.astype(np.float32) for k, v in readers.read_npz(path).items()}
  return {"params": traverse_util.unflatten_dict(flat, sep="/")}
