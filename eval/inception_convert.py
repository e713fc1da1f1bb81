"""PyTorch FID-Inception state dict <-> Flax parameters of eval.inception.FIDInceptionV3.

Both pytorch-fid's pt_inception-2015-12-05-6726825d.pth and torch-fidelity's
weights-inception-2015-12-05-6726825d.pth use the module names of torchvision's Inception3
("Mixed_5b.branch1x1.conv.weight", "...bn.running_mean", "fc.weight"), which the Flax module
mirrors: params["Mixed_5b"]["branch1x1"]["conv"]["kernel"] etc. Conv kernels go OIHW -> HWIO, the
fc weight [out, in] -> [in, out] (params "fc_kernel", "fc_bias"); batch norm weight / bias /
running_mean / running_var -> scale / bias / mean / var.
Every Flax parameter must be found and every torch tensor used (BN's num_batches_tracked counters
aside), else a ValueError names the keys.

torch is imported lazily, only to read a .pth file. `python -m eval.inception_convert --pth=X.pth
--out=X.npz` rewrites the state dict (same keys) as .npz, which loads without torch.
"""
import os
import re
import urllib.request
from typing import Any, Dict, Optional, Tuple

import jax
import numpy as np

from eval import inception
from mf_jax.checksum import file_sha256

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URLS = {
    # pytorch-fid's release asset (the file FID papers use via pytorch-fid).
    WEIGHTS_FILE: "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                  + WEIGHTS_FILE,
    "weights-inception-2015-12-05-6726825d.pth":
        "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
        "weights-inception-2015-12-05-6726825d.pth",
}
IGNORED_TORCH_SUFFIXES = (".num_batches_tracked",)
_BN_NAMES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def missing_weights_message(path: str) -> str:
  return (f"FID Inception weights not found at {path!r}. This machine cannot download them: copy "
          f"pytorch-fid's {WEIGHTS_FILE} (from {WEIGHTS_URLS[WEIGHTS_FILE]}) or torch-fidelity's "
          "weights-inception-2015-12-05-6726825d.pth to that path, or pass --inception=PATH. "
          "On a machine with internet, eval.inception_convert.download_weights(DIR) fetches it.")


def torch_key(path: Tuple[str, ...]) -> Tuple[str, str]:
  """Flax parameter path -> (torch state-dict key, layout) with layout in {conv, dense, vector}."""
  if path == ("fc_kernel",):
    return "fc.weight", "dense"
  if path == ("fc_bias",):
    return "fc.bias", "vector"
  *modules, owner, leaf = path
  if owner == "conv" and leaf == "kernel":
    return ".".join(modules + ["conv", "weight"]), "conv"
  if owner == "bn" and leaf in _BN_NAMES:
    return ".".join(modules + ["bn", _BN_NAMES[leaf]]), "vector"
  raise ValueError(f"No torch name for Flax parameter {'/'.join(path)}.")


def _to_flax(array: np.ndarray, layout: str) -> np.ndarray:
  if layout == "conv":
    return array.transpose(2, 3, 1, 0)  # OIHW -> HWIO
  if layout == "dense":
    return array.T
  return array


def _to_torch(array: np.ndarray, layout: str) -> np.ndarray:
  if layout == "conv":
    return array.transpose(3, 2, 0, 1)  # HWIO -> OIHW
  if layout == "dense":
    return array.T
  return array


def _flax_paths():
  leaves, treedef = jax.tree_util.tree_flatten_with_path(inception.param_shapes())
  return [(tuple(p.key for p in path), leaf.shape) for path, leaf in leaves], treedef


def torch_state_dict_to_flax(state_dict: Dict[str, Any]) -> Dict[str, Any]:
  """{torch key: tensor or array} -> Flax params (numpy float32). Raises naming bad/missing keys."""
  arrays = {k: _as_numpy(v) for k, v in state_dict.items()}
  paths, treedef = _flax_paths()
  used, missing, bad_shape, leaves = set(), [], [], []
  for path, shape in paths:
    key, layout = torch_key(path)
    if key not in arrays:
      missing.append(key)
      leaves.append(None)
      continue
    used.add(key)
    value = _to_flax(arrays[key], layout)
    if value.shape != tuple(shape):
      bad_shape.append(f"{key}: torch {arrays[key].shape}, expected Flax {tuple(shape)}")
    leaves.append(value.astype(np.float32))
  unexpected = sorted(k for k in arrays if k not in used and not k.endswith(IGNORED_TORCH_SUFFIXES))
  problems = []
  if missing:
    problems.append(f"{len(missing)} missing keys: {_short(missing)}")
  if unexpected:
    problems.append(f"{len(unexpected)} unexpected keys: {_short(unexpected)}")
  if bad_shape:
    problems.append(f"{len(bad_shape)} shape mismatches: {_short(bad_shape)}")
  if problems:
    raise ValueError("The state dict is not the FID Inception-v3 (pytorch-fid / torch-fidelity "
                     "key names): " + "; ".join(problems) + ".")
  return jax.tree_util.tree_unflatten(treedef, leaves)


def flax_to_torch_state_dict(params: Dict[str, Any]) -> Dict[str, np.ndarray]:
  """Flax params -> {torch key: numpy array} in the reference layout (inverse of the above)."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    key, layout = torch_key(tuple(p.key for p in path))
    out[key] = np.ascontiguousarray(_to_torch(np.asarray(leaf, np.float32), layout))
  return out


def _as_numpy(value) -> np.ndarray:
  if hasattr(value, "detach"):  # torch.Tensor
    return value.detach().cpu().numpy()
  return np.asarray(value)


def _short(items, n=6):
  return ", ".join(items[:n]) + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def check_sha256(path: str, expected: Optional[str]) -> None:
  """expected: full hex digest or a prefix (torch hub names carry the first 8+ digits); "auto"
  takes the prefix from a NAME-HEX.pth file name if it has one; None checks nothing."""
  if expected == "auto":
    m = re.search(r"-([0-9a-f]{8,64})\.pth$", os.path.basename(path))
    expected = m.group(1) if m else None
  if not expected:
    return
  actual = file_sha256(path)
  if not actual.startswith(expected.lower()):
    raise ValueError(f"Checksum mismatch for {path!r}: sha256 {actual} does not start with "
                     f"{expected}. The file is corrupt or not the FID Inception weights.")


def read_state_dict(path: str) -> Dict[str, Any]:
  """Reads a state dict: a PyTorch file (torch.load, tensors only) or an .npz with the same keys
  (written by this module's CLI; reading it needs no torch)."""
  if path.endswith(".npz"):
    with np.load(path) as data:
      return {k: data[k] for k in data.files}
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"Reading {path!r} needs PyTorch (a CPU build is enough), or convert it once "
                      "to .npz where torch is installed: python -m eval.inception_convert "
                      "--pth=FILE.pth --out=FILE.npz") from e
  state = torch.load(path, map_location="cpu", weights_only=True)
  if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
    state = state["state_dict"]
  if not isinstance(state, dict):
    raise ValueError(f"{path!r} holds a {type(state).__name__}, expected a state dict.")
  return state


def pth_to_npz(pth_path: str, npz_path: str, sha256: Optional[str] = "auto") -> str:
  """Validates a .pth state dict (all keys and shapes) and rewrites it as a torch-free .npz."""
  if not os.path.isfile(pth_path):
    raise FileNotFoundError(missing_weights_message(pth_path))
  check_sha256(pth_path, sha256)
  state = {k: _as_numpy(v) for k, v in read_state_dict(pth_path).items()
           if not k.endswith(IGNORED_TORCH_SUFFIXES)}
  torch_state_dict_to_flax(state)  # raises naming keys if it is not the FID Inception
  np.savez(npz_path, **state)
  return npz_path


def load_flax_params(path: str, sha256: Optional[str] = "auto") -> Dict[str, Any]:
  """Checks that the file exists (and its checksum), reads and converts it."""
  if not path or not os.path.isfile(path):
    raise FileNotFoundError(missing_weights_message(path))
  check_sha256(path, sha256)
  return torch_state_dict_to_flax(read_state_dict(path))


def download_weights(directory: str, name: str = WEIGHTS_FILE) -> str:
  """Downloads the weights (machines with internet only; never used in tests). Returns the path."""
  if name not in WEIGHTS_URLS:
    raise ValueError(f"Unknown weights file {name!r}; known: {sorted(WEIGHTS_URLS)}.")
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, name)
  if not os.path.isfile(path):
    tmp = path + ".part"
    urllib.request.urlretrieve(WEIGHTS_URLS[name], tmp)
    os.replace(tmp, path)
  check_sha256(path, "auto")
  return path


def main(argv=None):
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(
      prog="python -m eval.inception_convert",
      description="Check a FID Inception .pth and rewrite it as .npz (loads without torch).")
  parser.add_argument("--pth", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--sha256", default="auto")
  args = parser.parse_args(argv)
  print(pth_to_npz(args.pth, args.out, args.sha256 or None))


if __name__ == "__main__":
  main()
