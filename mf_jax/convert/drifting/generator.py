"""The Drifting release's generator parameters -> this project's ModernDiT parameters.

The release saves a generator as an artifact folder (its `params_ema/`): `ema_params.msgpack`, the
Flax msgpack of the EMA parameter tree of its `DitGen` module (sometimes wrapped as
{"params": tree}), and `metadata.json` whose `model_config` holds the module's fields (hidden_size,
depth, num_heads, patch_size, n_cls_tokens, noise_classes, noise_coords, ...). Every release name is
mapped by rule onto mf_jax/models/dit_modern.py, every shape checked, and all problems are reported
together, naming the release key.
"""
import json
import os
import re
from typing import Dict, List, Mapping, Optional

import numpy as np
from flax import serialization, traverse_util

PARAMS_FILE = "ema_params.msgpack"
METADATA_FILE = "metadata.json"

# (release path, this project's path), first full match wins; \1.. are block indices / leaf names.
# "{cond}" is the name of the model's one scalar condition (alpha for drifting).
_DENSE = r"TorchLinear_{}/Dense_0/(kernel|bias)"
NAME_RULES = (
    (r"Embed_0/embedding", r"label_embedder/embedding"),
    (r"TimestepEmbedder_0/" + _DENSE.format(0), r"{cond}_embedder/mlp_in/\1"),
    (r"TimestepEmbedder_0/" + _DENSE.format(1), r"{cond}_embedder/mlp_out/\1"),
    (r"RMSNorm_0/weight", r"{cond}_norm/scale"),
    (r"LightningDiT_0/" + _DENSE.format(0), r"patch_embed/\1"),
    (r"LightningDiT_0/" + _DENSE.format(1), r"cls_proj/\1"),
    (r"LightningDiT_0/pos_embed", r"pos_embed"),
    (r"LightningDiT_0/cls_embed", r"cls_embed"),
    (r"LightningDiT_0/blocks_(\d+)/" + _DENSE.format(0), r"block_\1/adaLN/\2"),
    (r"LightningDiT_0/blocks_(\d+)/RMSNorm_0/weight", r"block_\1/norm1/scale"),
    (r"LightningDiT_0/blocks_(\d+)/RMSNorm_1/weight", r"block_\1/norm2/scale"),
    (r"LightningDiT_0/blocks_(\d+)/Attention_0/" + _DENSE.format(0), r"block_\1/attn/qkv/\2"),
    (r"LightningDiT_0/blocks_(\d+)/Attention_0/" + _DENSE.format(1), r"block_\1/attn/proj/\2"),
    (r"LightningDiT_0/blocks_(\d+)/Attention_0/(q|k)_norm/weight", r"block_\1/attn/\2_norm/scale"),
    (r"LightningDiT_0/blocks_(\d+)/SwiGLUFFN_0/" + _DENSE.format(0), r"block_\1/mlp_gate/\2"),
    (r"LightningDiT_0/blocks_(\d+)/SwiGLUFFN_0/" + _DENSE.format(1), r"block_\1/mlp_up/\2"),
    (r"LightningDiT_0/blocks_(\d+)/SwiGLUFFN_0/" + _DENSE.format(2), r"block_\1/mlp_down/\2"),
    (r"LightningDiT_0/FinalLayer_0/" + _DENSE.format(0), r"final_adaLN/\1"),
    (r"LightningDiT_0/FinalLayer_0/" + _DENSE.format(1), r"final_proj/\1"),
    (r"LightningDiT_0/FinalLayer_0/RMSNorm_0/weight", r"final_norm/scale"),
)
NOISE_EMBED = re.compile(r"noise_embeds_(\d+)/embedding")
# Release model_config field -> (this project's config field, how to read it from the config).
CONFIG_FIELDS = {
    "hidden_size": "width", "depth": "depth", "num_heads": "heads", "patch_size": "patch",
    "input_size": "data.image_size", "in_channels": "data.channels",
    "out_channels": "data.channels", "n_cls_tokens": "model.cls_tokens",
    "noise_classes": "model.noise_classes", "noise_coords": "model.noise_coords",
}


def map_name(release: str, condition: str = "alpha") -> Optional[str]:
  """'LightningDiT_0/blocks_3/Attention_0/q_norm/weight' -> 'block_3/attn/q_norm/scale'."""
  for pattern, replacement in NAME_RULES:
    if re.fullmatch(pattern, release):
      return re.sub(pattern, replacement, release).replace("{cond}", condition)
  return None


def artifact_dir(src: str) -> str:
  """The folder holding ema_params.msgpack: `src` itself or its params_ema/ (a training workdir)."""
  for candidate in (os.path.join(src, "params_ema"), src):
    if os.path.isfile(os.path.join(candidate, PARAMS_FILE)):
      return candidate
  listing = sorted(os.listdir(src))[:12] if os.path.isdir(src) else "it does not exist"
  raise FileNotFoundError(f"--src={src!r} holds no {PARAMS_FILE} (nor params_ema/{PARAMS_FILE}): "
                          f"give the release's generator artifact folder (found: {listing}).")


def read_release(src: str):
  """(parameter tree, metadata dict or {}) of a release generator artifact folder."""
  folder = artifact_dir(src)
  with open(os.path.join(folder, PARAMS_FILE), "rb") as f:
    params = serialization.msgpack_restore(f.read())
  if isinstance(params, dict) and set(params) == {"params"}:
    params = params["params"]
  meta_path = os.path.join(folder, METADATA_FILE)
  metadata = {}
  if os.path.isfile(meta_path):
    with open(meta_path) as f:
      metadata = json.load(f)
  return params, metadata


def check_model_config(model_config: Mapping, config, dims) -> List[str]:
  """Release model_config fields that differ from this config (head count is not in the shapes)."""
  depth, width, heads, patch = dims
  ours = {"width": width, "depth": depth, "heads": heads, "patch": patch,
          "data.image_size": config.data.image_size, "data.channels": config.data.channels,
          "model.cls_tokens": config.model.cls_tokens,
          "model.noise_classes": config.model.noise_classes,
          "model.noise_coords": config.model.noise_coords}
  names = {"width": "model.hidden_size / model.variant", "depth": "model.depth / model.variant",
           "heads": "model.num_heads / model.variant", "patch": "the patch of model.variant"}
  problems = []
  for key, field in CONFIG_FIELDS.items():
    if key in model_config and int(model_config[key]) != int(ours[field]):
      problems.append(f"config: the release's model_config {key}={model_config[key]} but "
                      f"{names.get(field, field)} gives {ours[field]}")
  for key, want in (("use_swiglu", True), ("use_rope", True), ("use_rmsnorm", True),
                    ("use_qknorm", True), ("mlp_ratio", 4.0)):
    if key in model_config and model_config[key] != want:
      problems.append(f"config: the release's model_config {key}={model_config[key]}; "
                      f"model.name='dit_modern' implements only {key}={want}")
  return problems


def convert_params(release: Mapping, target: Mapping[str, "jax.ShapeDtypeStruct"],
                   condition: str = "alpha", problems: Optional[List[str]] = None
                   ) -> Dict[str, np.ndarray]:
  """Release parameter tree -> {this project's '/'-joined path: array}, shapes as in `target`.

  target: this project's flattened parameter shapes (under "params"). Raises ValueError listing
  every unmapped, misshaped or missing key (plus any `problems` passed in) when anything is wrong.
  """
  problems = list(problems or [])
  out, seen = {}, set()
  flat = traverse_util.flatten_dict(dict(release), sep="/")
  noise = {}
  for name, value in sorted(flat.items()):
    value = np.asarray(value)
    if m := NOISE_EMBED.fullmatch(name):
      noise[int(m.group(1))] = (name, value)
      continue
    ours = map_name(name, condition)
    if ours is None or ours not in target:
      problems.append(f"unmapped: {name} {value.shape}"
                      + (f" (-> {ours}, not in this model)" if ours else ""))
      continue
    seen.add(ours)
    want = tuple(target[ours].shape)
    if ours in ("pos_embed", "cls_embed") and value.shape[:1] == (1,):
      value = value[0]  # The release keeps a leading batch axis of 1.
    if value.shape != want:
      problems.append(f"misshaped: {name} {np.shape(flat[name])} -> {ours} {want}")
      continue
    out[ours] = value.astype(target[ours].dtype)
  if noise or "noise_embed" in target:
    seen.add("noise_embed")
    want = tuple(target["noise_embed"].shape) if "noise_embed" in target else None
    if want is None:
      problems.extend(f"unmapped: {n} (this config has model.noise_classes=0)"
                      for n, _ in noise.values())
    elif sorted(noise) != list(range(want[0])):
      problems.append(f"missing: noise_embeds_<i>/embedding for i in 0..{want[0] - 1} "
                      f"(model.noise_coords={want[0]}); found i in {sorted(noise)}")
    elif any(v.shape != want[1:] for _, v in noise.values()):
      bad = [f"{n} {v.shape}" for n, v in noise.values() if v.shape != want[1:]]
      problems.append(f"misshaped: {', '.join(bad)}; expected {want[1:]} each "
                      "(model.noise_classes, width)")
    else:
      out["noise_embed"] = np.stack([noise[i][1] for i in range(want[0])]).astype(
          target["noise_embed"].dtype)
  for ours in sorted(set(target) - seen):
    problems.append(f"missing: the release tree has nothing for {ours} {tuple(target[ours].shape)}")
  if problems:
    raise ValueError(f"The release's generator parameters do not fit this config; {len(problems)} "
                     "problem(s):\n  " + "\n  ".join(problems))
  return out
