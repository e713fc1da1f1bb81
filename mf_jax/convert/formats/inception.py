"""The FID Inception-v3 PyTorch state dict <-> Flax parameters of eval.inception.FIDInceptionV3.

Both pytorch-fid's pt_inception-2015-12-05-6726825d.pth and torch-fidelity's
weights-inception-2015-12-05-6726825d.pth use the module names of torchvision's Inception3
("Mixed_5b.branch1x1.conv.weight", "...bn.running_mean", "fc.weight"), which the Flax module
mirrors: params["Mixed_5b"]["branch1x1"]["conv"]["kernel"]. Conv kernels go OIHW -> HWIO, the fc
weight [out, in] -> [in, out] (params "fc_kernel", "fc_bias"); batch norm weight / bias /
running_mean / running_var -> scale / bias / mean / var; BN step counters are dropped.

The target tree (eval.inception.param_shapes()) is passed in, so this table does not import the
network (eval/ sits above mf_jax/). torch is imported only to read a .pth that exists; the CLI
rewrites the checked state dict (same keys) as .npz, which loads without torch.
"""
import os
import re
import urllib.request
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from mf_jax.checksum import file_sha256
from mf_jax.convert import engine, readers

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
_FLAX_BN = {v: k for k, v in _BN_NAMES.items()}

NAME_RULES = engine.rules(
    (r".*\.num_batches_tracked", None),
    (r"fc\.weight", "fc_kernel", "linear"),
    (r"fc\.bias", "fc_bias"),
    (r"(.*)\.conv\.weight", lambda m: m[1].replace(".", "/") + "/conv/kernel", "conv"),
    (r"(.*)\.bn\.(weight|bias|running_mean|running_var)",
     lambda m: m[1].replace(".", "/") + "/bn/" + _FLAX_BN[m[2]]),
)


def missing_weights_message(path: str) -> str:
  return (f"FID Inception weights not found at {path!r}. This machine cannot download them: copy "
          f"pytorch-fid's {WEIGHTS_FILE} (from {WEIGHTS_URLS[WEIGHTS_FILE]}) or torch-fidelity's "
          "weights-inception-2015-12-05-6726825d.pth to that path, or pass --inception=PATH. "
          "On a machine with internet, mf_jax.convert.formats.inception.download_weights(DIR) "
          "fetches it.")


def torch_key(path: Tuple[str, ...]) -> Tuple[str, str]:
  """Flax parameter path -> (torch state-dict key, layout): the inverse of NAME_RULES."""
  if path == ("fc_kernel",):
    return "fc.weight", "linear"
  if path == ("fc_bias",):
    return "fc.bias", "copy"
  *modules, owner, leaf = path
  if owner == "conv" and leaf == "kernel":
    return ".".join(modules + ["conv", "weight"]), "conv"
  if owner == "bn" and leaf in _BN_NAMES:
    return ".".join(modules + ["bn", _BN_NAMES[leaf]]), "copy"
  raise ValueError(f"No torch name for Flax parameter {'/'.join(path)}.")


def torch_state_dict_to_flax(state_dict: Mapping[str, Any], target) -> Dict[str, Any]:
  """{torch key: tensor or array} -> Flax params (numpy float32) shaped like `target`
  (eval.inception.param_shapes()). Raises engine.ConversionError listing every problem."""
  problems = []
  out = engine.convert(dict(state_dict), NAME_RULES, engine.flat(target), problems,
                       dtype=np.float32)
  engine.report(problems, "the state dict is not the FID Inception-v3 (pytorch-fid / "
                "torch-fidelity key names)", "give pytorch-fid's " + WEIGHTS_FILE)
  return engine.nest(out)


def _to_torch(array: np.ndarray, layout: str) -> np.ndarray:
  if layout == "conv":
    return array.transpose(3, 2, 0, 1)  # HWIO -> OIHW
  if layout == "linear":
    return array.T
  return array


def flax_to_torch_state_dict(params: Mapping[str, Any]) -> Dict[str, np.ndarray]:
  """Flax params -> {torch key: numpy array} in the reference layout (inverse of the above)."""
  out = {}
  for path, leaf in engine.flat(params).items():
    key, layout = torch_key(tuple(path.split("/")))
    out[key] = np.ascontiguousarray(_to_torch(np.asarray(leaf, np.float32), layout))
  return out


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
    raise engine.SourceError(path, f"Checksum mismatch: sha256 {actual} does not start with "
                             f"{expected}", "the file is corrupt or not the FID Inception "
                             "weights: copy pytorch-fid's " + WEIGHTS_FILE + " again")


def read_state_dict(path: str) -> Dict[str, Any]:
  """A state dict: a PyTorch file (tensors only) or an .npz with the same keys (no torch)."""
  if path.endswith(".npz"):
    return readers.read_npz(path)
  state = readers.read_torch(path)
  if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
    state = state["state_dict"]
  if not isinstance(state, dict):
    raise engine.SourceError(path, f"holds a {type(state).__name__}, not a state dict",
                             "give pytorch-fid's " + WEIGHTS_FILE)
  return state


def load_flax_params(path: str, target, sha256: Optional[str] = "auto") -> Dict[str, Any]:
  """Checks that the file exists (and its checksum), reads and converts it."""
  if not path or not os.path.isfile(path):
    raise FileNotFoundError(missing_weights_message(path))
  check_sha256(path, sha256)
  return torch_state_dict_to_flax(read_state_dict(path), target)


def pth_to_npz(pth_path: str, npz_path: str, target, sha256: Optional[str] = "auto") -> str:
  """Validates a .pth state dict (all keys and shapes) and rewrites it as a torch-free .npz."""
  if not os.path.isfile(pth_path):
    raise FileNotFoundError(missing_weights_message(pth_path))
  check_sha256(pth_path, sha256)
  state = {k: engine.as_numpy(v) for k, v in read_state_dict(pth_path).items()
           if not k.endswith(IGNORED_TORCH_SUFFIXES)}
  torch_state_dict_to_flax(state, target)  # Raises naming keys if it is not the FID Inception.
  os.makedirs(os.path.dirname(os.path.abspath(npz_path)), exist_ok=True)
  np.savez(npz_path, **state)
  return npz_path


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
