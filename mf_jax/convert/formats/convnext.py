"""ConvNeXt-V2 weights -> this project's ConvNeXtV2 (mf_jax/models/convnext.py) weights file.

Two sources: the Drifting release's own Flax ConvNextV2 tree (CONVNEXT_RULES, same layouts), and
the Hugging Face PyTorch checkpoint the release builds it from, facebook/convnextv2-base-22k-224
(HF_CONVNEXT_RULES: conv OIHW -> HWIO, linear [out, in] -> [in, out]; its ImageNet-22k classifier
is dropped: the features do not use it). The result is saved as the .npz that
drifting.convnext_path names (save_variables / load_variables below).
"""
import os
from typing import Any, Dict, Mapping, Tuple

import jax

from mf_jax.convert import engine, readers, weights_file
from mf_jax.convert.formats.drifting_mae import to_variables, unwrap
from mf_jax.models import convnext

# The release's Flax ConvNextV2 -> this project's ConvNeXtV2.
CONVNEXT_RULES = engine.rules(
    (r"downsample_layers_0/layers_0/(kernel|bias)", r"stem_conv/\1"),
    (r"downsample_layers_0/layers_1/weight", r"stem_norm/scale"),
    (r"downsample_layers_0/layers_1/bias", r"stem_norm/bias"),
    (r"downsample_layers_(\d)/layers_0/weight", r"down\1_norm/scale"),
    (r"downsample_layers_(\d)/layers_0/bias", r"down\1_norm/bias"),
    (r"downsample_layers_(\d)/layers_1/(kernel|bias)", r"down\1_conv/\2"),
    (r"stages_(\d)/layers_(\d+)/norm/weight", r"stage\1_block\2/norm/scale"),
    (r"stages_(\d)/layers_(\d+)/(dwconv|pwconv1|pwconv2|norm|grn)/(\w+)", r"stage\1_block\2/\3/\4"),
    (r"norm/(scale|bias)", r"head_norm/\1"),
)

_HF = r"convnextv2\."
_HF_STAGE = _HF + r"encoder\.stages\.(\d)\."
_HF_LAYER = _HF_STAGE + r"layers\.(\d+)\."
# Hugging Face ConvNextV2ForImageClassification state dict -> this project's ConvNeXtV2.
HF_CONVNEXT_RULES = engine.rules(
    (_HF + r"embeddings\.patch_embeddings\.weight", r"stem_conv/kernel", "conv"),
    (_HF + r"embeddings\.patch_embeddings\.bias", r"stem_conv/bias"),
    (_HF + r"embeddings\.layernorm\.weight", r"stem_norm/scale"),
    (_HF + r"embeddings\.layernorm\.bias", r"stem_norm/bias"),
    (_HF_STAGE + r"downsampling_layer\.0\.weight", r"down\1_norm/scale"),
    (_HF_STAGE + r"downsampling_layer\.0\.bias", r"down\1_norm/bias"),
    (_HF_STAGE + r"downsampling_layer\.1\.weight", r"down\1_conv/kernel", "conv"),
    (_HF_STAGE + r"downsampling_layer\.1\.bias", r"down\1_conv/bias"),
    (_HF_LAYER + r"dwconv\.weight", r"stage\1_block\2/dwconv/kernel", "conv"),
    (_HF_LAYER + r"dwconv\.bias", r"stage\1_block\2/dwconv/bias"),
    (_HF_LAYER + r"layernorm\.weight", r"stage\1_block\2/norm/scale"),
    (_HF_LAYER + r"layernorm\.bias", r"stage\1_block\2/norm/bias"),
    (_HF_LAYER + r"(pwconv1|pwconv2)\.weight", r"stage\1_block\2/\3/kernel", "linear"),
    (_HF_LAYER + r"(pwconv1|pwconv2)\.bias", r"stage\1_block\2/\3/bias"),
    (_HF_LAYER + r"grn\.weight", r"stage\1_block\2/grn/gamma"),  # [1, 1, 1, C] in both.
    (_HF_LAYER + r"grn\.bias", r"stage\1_block\2/grn/beta"),
    (_HF + r"layernorm\.weight", r"head_norm/scale"),
    (_HF + r"layernorm\.bias", r"head_norm/bias"),
    (r"classifier\..*", None),  # The ImageNet-22k classifier: features do not use it.
)
HF_FILES = ("model.safetensors", "pytorch_model.bin")


def _fix(model) -> str:
  return (f"the weights are not ConvNeXt-V2 of depths={tuple(model.depths)}, "
          f"dims={tuple(model.dims)}: set drifting.convnext_depths/convnext_dims to the checkpoint's")


def _convert(source: Mapping[str, Any], table, model, what: str) -> Dict[str, Any]:
  target = engine.abstract_params(lambda: model.init(jax.random.key(0), convnext.example_input()))
  problems = []
  out = engine.convert(source, table, target, problems)
  engine.report(problems, f"the {what} does not fit this ConvNeXt-V2", _fix(model))
  return to_variables(out)


def convert_convnext(release_params: Mapping[str, Any], model) -> Dict[str, Any]:
  """Release ConvNextV2 (Flax) parameters -> variables of mf_jax.models.convnext.ConvNeXtV2."""
  return _convert(unwrap(release_params), CONVNEXT_RULES, model, "release's ConvNeXt")


def convert_convnext_hf(state_dict: Mapping[str, Any], model) -> Dict[str, Any]:
  """A Hugging Face ConvNextV2ForImageClassification state dict (torch tensors or arrays, e.g.
  from facebook/convnextv2-base-22k-224's safetensors) -> variables of `model`."""
  return _convert(dict(state_dict), HF_CONVNEXT_RULES, model, "Hugging Face ConvNeXt-V2")


def read_hf_state_dict(src: str):
  """The state dict of a local Hugging Face checkpoint: a folder holding model.safetensors or
  pytorch_model.bin, or one of those files."""
  if os.path.isdir(src):
    names = [n for n in HF_FILES if os.path.isfile(os.path.join(src, n))]
    if not names:
      raise engine.SourceError(src, "holds neither model.safetensors nor pytorch_model.bin",
                               "give a local Hugging Face ConvNextV2ForImageClassification "
                               "checkpoint such as facebook/convnextv2-base-22k-224")
    src = os.path.join(src, names[0])
  if src.endswith(".safetensors"):
    return readers.read_safetensors(src)
  return readers.read_torch(src)


def convert_convnext_to_file(src: str, config, out: str):
  """Hugging Face ConvNeXt-V2 checkpoint at `src` -> this project's weights file `out` for
  drifting.convnext_path (size from config.drifting.convnext_depths/convnext_dims)."""
  from mf_jax import networks  # pylint: disable=g-import-not-at-top
  variables = convert_convnext_hf(read_hf_state_dict(src), networks.convnext_model(config))
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  save_variables(out, variables)
  return variables, out


save_variables = weights_file.save  # The weights file of the module docstring.


def file_shapes(path: str) -> Mapping[str, Tuple[int, ...]]:
  """{name: shape} of a weights file, from the .npy headers only (no array is read)."""
  return readers.npz_shapes(path)


def _expected(model: convnext.ConvNeXtV2):
  return engine.abstract_params(lambda: model.init(jax.random.key(0), convnext.example_input()))


def _describe(model: convnext.ConvNeXtV2) -> str:
  return f"depths={tuple(model.depths)}, dims={tuple(model.dims)}"


def fit_problems(shapes: Mapping[str, Tuple[int, ...]], model: convnext.ConvNeXtV2) -> str:
  """'' when `shapes` are exactly model's parameters, else every unmapped, misshaped and missing
  name (nothing is allocated: jax.eval_shape)."""
  return weights_file.fit_problems(shapes, _expected(model), _describe(model))


def load_variables(path: str, model: convnext.ConvNeXtV2):
  """The weights file at `path` as variables {"params": tree} of `model` (host float32 arrays);
  ValueError naming every missing, unexpected and misshaped parameter."""
  return weights_file.load(path, _expected(model), _describe(model),
                           "set drifting.convnext_depths/convnext_dims to the file's size, or "
                           "convert the matching checkpoint")


def file_problems(path: str, model: convnext.ConvNeXtV2) -> str:
  """'' when the weights file at `path` fits `model`, else what is wrong (read from headers)."""
  return weights_file.file_problems(path, _expected(model), _describe(model))
