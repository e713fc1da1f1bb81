"""torchvision VGG16 + the lpips package's v0.1 linear layers -> one weights file for
mf_jax/models/lpips.py (LPIPS).

Two PyTorch sources, as the lpips package itself assembles them:
  the trunk: a torchvision VGG16 state dict (`features.N.weight` [out, in, 3, 3] and `.bias`, N the
    index in torchvision's `features` Sequential: 0, 2 | 5, 7 | 10, 12, 14 | 17, 19, 21 | 24, 26, 28;
    e.g. vgg16-397923af.pth, whose `classifier.*` is dropped: LPIPS does not use it);
  the linear layers: `lpips/weights/v0.1/vgg.pth` (`lin{i}.model.1.weight` [1, C_i, 1, 1]).
The result is the .npz that load_variables reads ({"params": tree}, float32, names of the model's
docstring), so training loads it without torch (objectives' FrozenNetwork, file_format
"lpips_vgg16").
"""
import os
import re
from typing import Any, Dict, Mapping, Tuple

import jax
import numpy as np

from mf_jax.convert import engine, readers, weights_file
from mf_jax.models import lpips

HOWTO = ("python -m mf_jax.convert lpips_vgg16 --src=vgg16-397923af.pth "
         "--lin=<lpips package>/weights/v0.1/vgg.pth --out=lpips_vgg16.npz")


def feature_index_names(depths=lpips.VGG16_DEPTHS) -> Dict[int, str]:
  """{torchvision features index: conv{block}_{layer}}: each conv is followed by its ReLU, each
  block but the last by a max pool (which is also there after the last block, unused)."""
  names, index = {}, 0
  for block, depth in enumerate(depths, start=1):
    for layer in range(1, depth + 1):
      names[index] = f"conv{block}_{layer}"
      index += 2  # Conv, ReLU.
    index += 1  # MaxPool.
  return names


def _features_target(match: re.Match) -> str:
  name = feature_index_names().get(int(match.group(1)), f"features_{match.group(1)}")
  return f"vgg/{name}/" + {"weight": "kernel", "bias": "bias"}[match.group(2)]


RULES = engine.rules(
    (r"features\.(\d+)\.(weight|bias)", _features_target, "conv"),
    (r"classifier\..*", None),  # torchvision's ImageNet classifier: LPIPS does not use it.
    (r"lin(\d)\.model\.1\.weight", r"lin\1/kernel", "conv"),
)


def target(module: lpips.LPIPS) -> Dict[str, jax.ShapeDtypeStruct]:
  return engine.abstract_params(lambda: module.init(jax.random.key(0), *lpips.example_inputs()))


def _describe(module) -> str:
  return f"LPIPS with VGG depths={tuple(module.depths)}, widths={tuple(module.widths)}"


def convert_state_dict(state: Mapping[str, Any], module: lpips.LPIPS) -> Dict[str, Any]:
  """The trunk's and the linear layers' keys in one flat dict -> variables {"params": tree}."""
  problems = []
  out = engine.convert(state, RULES, target(module), problems, dtype=np.float32)
  engine.report(problems, f"the VGG16 and lpips linear weights do not fit {_describe(module)}",
                "give torchvision's VGG16 state dict as --src and the lpips package's "
                "weights/v0.1/vgg.pth as --lin")
  return {"params": engine.nest(out)}


def read_sources(vgg_path: str, lin_path: str) -> Dict[str, Any]:
  """The two files' tensors in one flat dict; a key in both is a mistake (the same file twice?)."""
  vgg = readers.read_torch(vgg_path)
  lin = readers.read_torch(lin_path)
  for path, obj in ((vgg_path, vgg), (lin_path, lin)):
    if not isinstance(obj, Mapping):
      raise engine.SourceError(path, f"holds a {type(obj).__name__}, not a state dict",
                               "give the .pth of a state dict (torchvision / lpips weights)")
  both = sorted(set(vgg) & set(lin))
  if both:
    raise engine.SourceError(lin_path, f"repeats keys of {vgg_path} ({', '.join(both[:3])})",
                             "give the VGG16 file as --src and the lpips linear weights as --lin")
  return {k: engine.as_numpy(v) for k, v in {**vgg, **lin}.items()}


def convert_to_file(vgg_path: str, lin_path: str, out: str,
                    module: lpips.LPIPS = lpips.LPIPS()) -> Tuple[Dict[str, Any], str]:
  variables = convert_state_dict(read_sources(vgg_path, lin_path), module)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  save_variables(out, variables)
  return variables, out


save_variables = weights_file.save


def fit_problems(shapes: Mapping[str, Tuple[int, ...]], module: lpips.LPIPS) -> str:
  """'' when `shapes` are exactly the module's parameters, else every problem (unmapped,
  misshaped, missing) in one line."""
  return weights_file.fit_problems(shapes, target(module), _describe(module))


def file_problems(path: str, module: lpips.LPIPS) -> str:
  """'' when the weights file at `path` fits `module`, else what is wrong (from the headers)."""
  return weights_file.file_problems(path, target(module), _describe(module))


def load_variables(path: str, module: lpips.LPIPS):
  """The weights file at `path` as variables {"params": tree} of `module` (host float32 arrays);
  SourceError naming every missing, unexpected and misshaped parameter."""
  return weights_file.load(path, target(module), _describe(module),
                           f"convert the weights with {HOWTO}")
