"""The release's feature encoders -> this project's parameters: the MAE ResNet and ConvNeXt-V2.

The release (github.com/lambertae/drifting at accd0cf0) keeps the MAE as a Flax parameter tree of
its MAEResNetJAX (saved with its EMA artifacts) and builds ConvNeXt-V2 from the Hugging Face
PyTorch checkpoint facebook/convnextv2-base-22k-224 into a Flax tree of its ConvNextV2. Both Flax
trees map name by name onto mf_jax/models/mae_resnet.py and mf_jax/models/convnext.py (same
layouts, so no transposes); the Hugging Face state dict maps onto ConvNeXt with the PyTorch ->
Flax transposes. Every shape is checked against the target model's shapes (jax.eval_shape), and
an error lists all missing, unexpected and misshaped keys at once.
"""
import re
from typing import Any, Callable, Dict, Mapping, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

# (release path, this project's path), full matches; the first matching rule wins.
MAE_RULES = (
    (r"encoder/conv1/kernel", r"encoder/stem_conv/kernel"),
    (r"encoder/gn1/(scale|bias)", r"encoder/stem_norm/\1"),
    (r"encoder/layer(\d)_norm/(scale|bias)", lambda m: f"encoder/stage{int(m[1]) - 1}_norm/{m[2]}"),
    (r"encoder/stages_(\d)/layers_(\d+)/(conv1|conv2)/kernel", r"encoder/stage\1_block\2/\3/kernel"),
    (r"encoder/stages_(\d)/layers_(\d+)/gn(1|2)/(scale|bias)", r"encoder/stage\1_block\2/norm\3/\4"),
    (r"encoder/stages_(\d)/layers_(\d+)/proj_conv/kernel", r"encoder/stage\1_block\2/skip_conv/kernel"),
    (r"encoder/stages_(\d)/layers_(\d+)/proj_gn/(scale|bias)", r"encoder/stage\1_block\2/skip_norm/\3"),
    (r"decoder/bridge/conv/kernel", r"decoder/bridge/conv/kernel"),
    (r"decoder/bridge/gn/(scale|bias)", r"decoder/bridge/norm/\1"),
    (r"decoder/up\d(\d)/concat_norm_fn/(scale|bias)", r"decoder/up\1/concat_norm/\2"),
    (r"decoder/up\d(\d)/(proj|refine)/conv/kernel", r"decoder/up\1/\2/conv/kernel"),
    (r"decoder/up\d(\d)/(proj|refine)/gn/(scale|bias)", r"decoder/up\1/\2/norm/\3"),
    (r"decoder/head/(kernel|bias)", r"decoder/head/\1"),
    (r"fc/(kernel|bias)", r"classifier/\1"),
)

CONVNEXT_RULES = (
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

# Hugging Face ConvNextV2ForImageClassification state dict -> this project's ConvNeXt.
# The third entry says how a PyTorch tensor becomes the Flax one.
HF_CONVNEXT_RULES = (
    (r"convnextv2\.embeddings\.patch_embeddings\.(weight|bias)", r"stem_conv/\1", "conv"),
    (r"convnextv2\.embeddings\.layernorm\.(weight|bias)", r"stem_norm/\1", "norm"),
    (r"convnextv2\.encoder\.stages\.(\d)\.downsampling_layer\.0\.(weight|bias)", r"down\1_norm/\2", "norm"),
    (r"convnextv2\.encoder\.stages\.(\d)\.downsampling_layer\.1\.(weight|bias)", r"down\1_conv/\2", "conv"),
    (r"convnextv2\.encoder\.stages\.(\d)\.layers\.(\d+)\.dwconv\.(weight|bias)",
     r"stage\1_block\2/dwconv/\3", "conv"),
    (r"convnextv2\.encoder\.stages\.(\d)\.layers\.(\d+)\.layernorm\.(weight|bias)",
     r"stage\1_block\2/norm/\3", "norm"),
    (r"convnextv2\.encoder\.stages\.(\d)\.layers\.(\d+)\.(pwconv1|pwconv2)\.(weight|bias)",
     r"stage\1_block\2/\3/\4", "linear"),
    (r"convnextv2\.encoder\.stages\.(\d)\.layers\.(\d+)\.grn\.weight", r"stage\1_block\2/grn/gamma", "copy"),
    (r"convnextv2\.encoder\.stages\.(\d)\.layers\.(\d+)\.grn\.bias", r"stage\1_block\2/grn/beta", "copy"),
    (r"convnextv2\.layernorm\.(weight|bias)", r"head_norm/\1", "norm"),
)
HF_IGNORED = r"classifier\..*"  # The ImageNet-22k classifier: features do not use it.


def flatten(tree: Mapping[str, Any]) -> Dict[str, Any]:
  """Nested dict (optionally under a top 'params' key) or flat '/'-joined dict -> flat dict."""
  if set(tree) == {"params"} and hasattr(tree["params"], "keys"):
    tree = tree["params"]
  if all(not hasattr(v, "keys") for v in tree.values()):
    return dict(tree)
  return {"/".join(k): v for k, v in traverse_util.flatten_dict(dict(tree)).items()}


def map_name(name: str, rules) -> Any:
  for rule in rules:
    pattern, target = rule[0], rule[1]
    m = re.fullmatch(pattern, name)
    if m:
      new = target(m) if callable(target) else m.expand(target)
      return (new,) + tuple(rule[2:])
  return None


def expected_shapes(init_fn: Callable[[], Any]) -> Dict[str, Tuple[int, ...]]:
  """{path: shape} of a model's parameters from jax.eval_shape (nothing allocated)."""
  return {k: tuple(v.shape) for k, v in flatten(jax.eval_shape(init_fn)).items()}


def convert(source: Mapping[str, Any], rules, expected: Mapping[str, Tuple[int, ...]],
            what: str, transform: Callable[..., Any] = lambda a, *how: a) -> Dict[str, Any]:
  """Maps every source leaf by `rules`, checks it against `expected`; returns {"params": tree}.

  Raises ValueError naming every source key without a rule or target, every expected key that
  no source key fills, and every shape mismatch.
  """
  out, unexpected, misshaped, misshaped_targets = {}, [], [], set()
  for name, value in sorted(flatten(source).items()):
    mapped = map_name(name, rules)
    if mapped is None or mapped[0] not in expected:
      unexpected.append(name)
      continue
    target = mapped[0]
    array = np.asarray(transform(np.asarray(value), *mapped[1:]))
    if tuple(array.shape) != tuple(expected[target]):
      misshaped.append(f"{name} {tuple(np.shape(value))} -> {target} needs {expected[target]}")
      misshaped_targets.add(target)
      continue
    out[target] = jnp.asarray(array)
  missing = sorted(set(expected) - set(out) - misshaped_targets)
  problems = []
  if missing:
    problems.append(f"missing {len(missing)} key(s) for this project's {what}: {missing}")
  if misshaped:
    problems.append(f"misshaped {len(misshaped)} key(s): {misshaped}")
  if unexpected:
    problems.append(f"unexpected {len(unexpected)} key(s) the {what} has no place for: {unexpected}")
  if problems:
    raise ValueError(f"cannot convert the release's {what}: " + "; ".join(problems) +
                     ". Check that the config (widths, layers, channels, input_patch_size) matches"
                     " the checkpoint.")
  return {"params": traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in out.items()})}


def convert_mae(release_params: Mapping[str, Any], model, image_size: int) -> Dict[str, Any]:
  """Release MAEResNetJAX parameters -> variables of mf_jax.models.mae_resnet.MAEResNet `model`."""
  x = jnp.zeros((1, image_size, image_size, model.channels), jnp.float32)
  mask = jnp.zeros(x.shape[:3] + (1,), bool)
  expected = expected_shapes(lambda: model.init(jax.random.key(0), x, mask))
  return convert(release_params, MAE_RULES, expected, "MAE encoder")


def convert_mae_encoder_only(release_params: Mapping[str, Any], model, image_size: int):
  """As convert_mae for a tree holding only the encoder (the decoder and classifier are not needed
  for features); the target is the encoder's own parameters."""
  x = jnp.zeros((1, image_size, image_size, model.channels), jnp.float32)
  expected = expected_shapes(lambda: model.init(jax.random.key(0), x, method=model.activations))
  return convert(release_params, MAE_RULES, expected, "MAE encoder")


def convert_convnext(release_params: Mapping[str, Any], model) -> Dict[str, Any]:
  """Release ConvNextV2 (Flax) parameters -> variables of mf_jax.models.convnext.ConvNeXtV2."""
  x = jnp.zeros((1, 224, 224, 3), jnp.float32)
  return convert(release_params, CONVNEXT_RULES, expected_shapes(lambda: model.init(
      jax.random.key(0), x)), "ConvNeXt")


def _from_torch(array: np.ndarray, how: str) -> np.ndarray:
  if how == "conv" and array.ndim == 4:  # [out, in, kh, kw] -> [kh, kw, in, out]
    return array.transpose(2, 3, 1, 0)
  if how == "linear" and array.ndim == 2:  # [out, in] -> [in, out]
    return array.T
  return array


def convert_convnext_hf(state_dict: Mapping[str, Any], model) -> Dict[str, Any]:
  """A Hugging Face ConvNextV2ForImageClassification state dict (torch tensors or arrays, e.g.
  from facebook/convnextv2-base-22k-224's safetensors) -> variables of `model`."""
  arrays = {k: (v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v))
            for k, v in state_dict.items() if not re.fullmatch(HF_IGNORED, k)}
  # PyTorch's "weight" is a Flax kernel or scale: matched against both as "W" (renamed below).
  flat_rules = tuple((p, lambda m, t=t: re.sub(r"/weight$", "/W", m.expand(t)), how)
                     for p, t, how in HF_CONVNEXT_RULES)
  x = jnp.zeros((1, 224, 224, 3), jnp.float32)
  expected = expected_shapes(lambda: model.init(jax.random.key(0), x))
  # Flax leaf names differ by module kind: weight -> kernel (conv, linear) or scale (norms).
  renamed = {}
  for path, shape in expected.items():
    renamed[re.sub(r"/(kernel|scale)$", "/W", path)] = (path, shape)
  converted = convert(arrays, flat_rules, {k: s for k, (_, s) in renamed.items()}, "ConvNeXt",
                      _from_torch)
  flat = flatten(converted)
  return {"params": traverse_util.unflatten_dict(
      {tuple(renamed[k][0].split("/")): v for k, v in flat.items()})}


def count(tree) -> int:
  return sum(int(np.prod(np.shape(a))) for a in jax.tree_util.tree_leaves(tree))
