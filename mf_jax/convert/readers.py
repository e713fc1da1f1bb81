"""Readers of foreign checkpoint files -> trees of numpy arrays, every failure naming the file.

  msgpack      flax.serialization (official MeanFlow `checkpoint_<step>`, Drifting artifacts)
  orbax        an Orbax PyTree checkpoint folder
  torch        a PyTorch pickle (.pth / .bin / .pt), tensors only; torch is imported only after
               the file is known to exist, and its absence is reported with the install line
  safetensors  numpy only (torch only for bfloat16 tensors, which numpy cannot hold)
  npz          numpy archives (this project's torch-free copies)
`read` picks by the file name. Each reader raises engine.SourceError for a user's mistake.
"""
import os
import zipfile
from typing import Any, Dict, Mapping, Tuple

import numpy as np

from mf_jax.convert.engine import SourceError

ORBAX_MARKERS = ("_METADATA", "manifest.ocdbt", "checkpoint")
TORCH_SUFFIXES = (".pth", ".bin", ".pt", ".ckpt")


def require_file(path: str, what: str, fix: str) -> str:
  """`path` itself if it is a non-empty file; else SourceError naming it."""
  if not path or not os.path.exists(path):
    raise SourceError(path or "''", f"does not exist ({what})", fix)
  if os.path.isfile(path) and os.path.getsize(path) == 0:
    raise SourceError(path, f"is empty ({what}; an interrupted copy?)", fix)
  return path


def is_orbax(path: str) -> bool:
  return os.path.isdir(path) and any(os.path.exists(os.path.join(path, f)) for f in ORBAX_MARKERS)


def read_msgpack(path: str) -> Any:
  from flax import serialization  # pylint: disable=g-import-not-at-top
  require_file(path, "a flax msgpack file", "give the checkpoint file itself")
  with open(path, "rb") as f:
    data = f.read()
  try:
    return serialization.msgpack_restore(data)
  except Exception as e:  # msgpack raises its own ValueError subclasses, with no file name.
    raise SourceError(path, f"is not a complete flax msgpack file ({e})",
                      "copy the checkpoint again (it may be truncated)") from e


def read_orbax(path: str) -> Any:
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  if not is_orbax(path):
    raise SourceError(path, f"is not an Orbax checkpoint folder (none of {ORBAX_MARKERS})",
                      "give the folder that holds the checkpoint's _METADATA")
  return ocp.PyTreeCheckpointer().restore(os.path.abspath(path))


def import_torch(path: str):
  """torch, or SourceError saying that reading `path` needs it (asked only for an existing file)."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise SourceError(path, "is a PyTorch file and PyTorch is not installed",
                      "pip install torch (a CPU build is enough), then run the converter again"
                      ) from e
  return torch


def read_torch(path: str, weights_only: bool = True) -> Any:
  """The object of a torch pickle, tensors as numpy arrays where it is a (nested) state dict."""
  require_file(path, "a PyTorch checkpoint", "give the .pth/.bin file")
  torch = import_torch(path)
  try:
    obj = torch.load(path, map_location="cpu", weights_only=weights_only)
  except Exception as e:  # pickle / zip errors of a damaged or foreign file.
    raise SourceError(path, f"cannot be read by torch.load ({type(e).__name__}: {e})",
                      "copy the file again, or check that it is a PyTorch checkpoint") from e
  return obj


def torch_to_numpy(tensors: Mapping[str, Any], dtype=None) -> Dict[str, np.ndarray]:
  """{key: tensor} -> {key: numpy array} (float() first when a dtype is asked: bfloat16)."""
  out = {}
  for k, v in tensors.items():
    if hasattr(v, "detach"):
      v = (v.detach().float() if dtype is not None else v.detach()).cpu().numpy()
    out[k] = np.asarray(v, dtype) if dtype is not None else np.asarray(v)
  return out


def read_safetensors(path: str, dtype=None) -> Dict[str, np.ndarray]:
  """Tensors of a .safetensors file with numpy; bfloat16 files go through torch."""
  require_file(path, "a safetensors file", "give the .safetensors file")
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  try:
    with safe_open(path, framework="numpy") as f:
      return {k: (np.asarray(f.get_tensor(k), dtype) if dtype is not None else f.get_tensor(k))
              for k in f.keys()}
  except (TypeError, ValueError):
    pass  # bfloat16 tensors have no numpy dtype: go through torch below.
  import_torch(path)
  from safetensors.torch import load_file  # pylint: disable=g-import-not-at-top
  return torch_to_numpy(load_file(path), dtype or np.float32)


def read_npz(path: str) -> Dict[str, np.ndarray]:
  require_file(path, "a numpy .npz file", "give the .npz file")
  try:
    with np.load(path) as data:
      return {k: data[k] for k in data.files}
  except (zipfile.BadZipFile, ValueError, OSError) as e:
    raise SourceError(path, f"is not a readable .npz ({e})", "write the file again") from e


def npz_shapes(path: str) -> Dict[str, Tuple[int, ...]]:
  """{name: shape} of an .npz, from the .npy headers only (no array is read)."""
  require_file(path, "a numpy .npz file", "give the .npz file")
  shapes = {}
  try:
    with zipfile.ZipFile(path) as z:
      for name in z.namelist():
        with z.open(name) as f:
          version = np.lib.format.read_magic(f)
          read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                         else np.lib.format.read_array_header_2_0)
          shape, _, _ = read_header(f)
        shapes[name[:-len(".npy")] if name.endswith(".npy") else name] = tuple(shape)
  except (zipfile.BadZipFile, ValueError) as e:
    raise SourceError(path, f"is not a readable .npz ({e})", "write the file again") from e
  return shapes


def read(path: str) -> Any:
  """Any of the formats above, picked by the name (an Orbax folder by its markers)."""
  if os.path.isdir(path):
    return read_orbax(path)
  if path.endswith(".safetensors"):
    return read_safetensors(path)
  if path.endswith(".npz"):
    return read_npz(path)
  if path.endswith(TORCH_SUFFIXES):
    return read_torch(path)
  return read_msgpack(path)
