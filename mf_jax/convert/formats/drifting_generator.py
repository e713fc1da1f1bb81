"""The Drifting release's generator (github.com/lambertae/drifting) -> this project's ModernDiT.

The release saves a generator as an artifact folder (its `params_ema/`): `ema_params.msgpack`, the
Flax msgpack of the EMA parameter tree of its `DitGen` module (sometimes wrapped as
{"params": tree}), and `metadata.json` whose `model_config` holds the module's fields (hidden_size,
depth, num_heads, patch_size, n_cls_tokens, noise_classes, noise_coords, ...). Names map by
NAME_RULES onto mf_jax/models/dit_modern.py (same layouts); the release's per-coordinate noise
tables noise_embeds_<i> are stacked into one `noise_embed` [coords, classes, width].
"""
import json
import os
import re
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np

from mf_jax.convert import engine, readers

PARAMS_FILE = "ema_params.msgpack"
METADATA_FILE = "metadata.json"
NOISE_EMBED = re.compile(r"noise_embeds_(\d+)/embedding")
STACKED_NOISE = "noise_embeds_<i>/embedding"  # The tables stacked [coords, classes, width].

# (release path, this project's path); "{cond}" is the name of the model's one scalar condition
# (alpha for drifting), filled by `table`.
_DENSE = r"TorchLinear_{}/Dense_0/(kernel|bias)"
_DIT = r"LightningDiT_0/"
_BLOCK = _DIT + r"blocks_(\d+)/"
NAME_TEMPLATES = (
    (r"Embed_0/embedding", r"label_embedder/embedding"),
    (r"TimestepEmbedder_0/" + _DENSE.format(0), r"{cond}_embedder/mlp_in/\1"),
    (r"TimestepEmbedder_0/" + _DENSE.format(1), r"{cond}_embedder/mlp_out/\1"),
    (r"RMSNorm_0/weight", r"{cond}_norm/scale"),
    (_DIT + _DENSE.format(0), r"patch_embed/\1"),
    (_DIT + _DENSE.format(1), r"cls_proj/\1"),
    (_DIT + r"pos_embed", r"pos_embed", "drop_batch_axis"),  # The release keeps a batch axis of 1.
    (_DIT + r"cls_embed", r"cls_embed", "drop_batch_axis"),
    (_BLOCK + _DENSE.format(0), r"block_\1/adaLN/\2"),
    (_BLOCK + r"RMSNorm_0/weight", r"block_\1/norm1/scale"),
    (_BLOCK + r"RMSNorm_1/weight", r"block_\1/norm2/scale"),
    (_BLOCK + r"Attention_0/" + _DENSE.format(0), r"block_\1/attn/qkv/\2"),
    (_BLOCK + r"Attention_0/" + _DENSE.format(1), r"block_\1/attn/proj/\2"),
    (_BLOCK + r"Attention_0/(q|k)_norm/weight", r"block_\1/attn/\2_norm/scale"),
    (_BLOCK + r"SwiGLUFFN_0/" + _DENSE.format(0), r"block_\1/mlp_gate/\2"),
    (_BLOCK + r"SwiGLUFFN_0/" + _DENSE.format(1), r"block_\1/mlp_up/\2"),
    (_BLOCK + r"SwiGLUFFN_0/" + _DENSE.format(2), r"block_\1/mlp_down/\2"),
    (_DIT + r"FinalLayer_0/" + _DENSE.format(0), r"final_adaLN/\1"),
    (_DIT + r"FinalLayer_0/" + _DENSE.format(1), r"final_proj/\1"),
    (_DIT + r"FinalLayer_0/RMSNorm_0/weight", r"final_norm/scale"),
    (STACKED_NOISE, r"noise_embed"),
)
# Release model_config field -> this project's config field.
CONFIG_FIELDS = {
    "hidden_size": "width", "depth": "depth", "num_heads": "heads", "patch_size": "patch",
    "input_size": "data.image_size", "in_channels": "data.channels",
    "out_channels": "data.channels", "n_cls_tokens": "model.cls_tokens",
    "noise_classes": "model.noise_classes", "noise_coords": "model.noise_coords",
}
FIX = ("give the config of the same generator (model.name='dit_modern', its variant, "
       "cls_tokens, noise_classes, noise_coords; e.g. configs/imagenet_drift_l2_sota.py)")


def table(condition: str = "alpha") -> Tuple[engine.Rule, ...]:
  return engine.rules(*((row[0], row[1].replace("{cond}", condition)) + tuple(row[2:])
                        for row in NAME_TEMPLATES))


def map_name(release: str, condition: str = "alpha") -> Optional[str]:
  """'LightningDiT_0/blocks_3/Attention_0/q_norm/weight' -> 'block_3/attn/q_norm/scale'."""
  return engine.map_name(release, table(condition))[1]


def artifact_dir(src: str) -> str:
  """The folder holding ema_params.msgpack: `src` itself or its params_ema/ (a training workdir)."""
  for candidate in (os.path.join(src, "params_ema"), src):
    if os.path.isfile(os.path.join(candidate, PARAMS_FILE)):
      return candidate
  listing = f"found {sorted(os.listdir(src))[:12]}" if os.path.isdir(src) else "it does not exist"
  raise engine.SourceError(src, f"holds no {PARAMS_FILE} (nor params_ema/{PARAMS_FILE}; {listing})",
                           "give the release's artifact folder (ema_params.msgpack, metadata.json)")


def read_release(src: str):
  """(parameter tree, metadata dict or {}) of a release artifact folder."""
  folder = artifact_dir(src)
  params = readers.read_msgpack(os.path.join(folder, PARAMS_FILE))
  if isinstance(params, dict) and set(params) == {"params"}:
    params = params["params"]
  meta_path = os.path.join(folder, METADATA_FILE)
  metadata = {}
  if os.path.isfile(meta_path):
    try:
      with open(meta_path) as f:
        metadata = json.load(f)
    except json.JSONDecodeError as e:
      raise engine.SourceError(meta_path, f"is not valid JSON ({e})",
                               "copy the artifact again, or delete the file to skip its checks"
                               ) from e
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


def stack_noise_tables(flat: Dict[str, np.ndarray], problems: List[str]) -> Dict[str, np.ndarray]:
  """noise_embeds_<i>/embedding, i = 0..n-1, -> one STACKED_NOISE [n, classes, width]; tables
  that cannot stack (gaps, unequal shapes) are named in `problems` and dropped."""
  noise = {int(m.group(1)): (k, np.asarray(v)) for k, v in flat.items()
           if (m := NOISE_EMBED.fullmatch(k))}
  rest = {k: v for k, v in flat.items() if not NOISE_EMBED.fullmatch(k)}
  if not noise:
    return rest
  shapes = {v.shape for _, v in noise.values()}
  if sorted(noise) != list(range(len(noise))):
    problems.append(f"missing: noise_embeds_<i>/embedding must be i = 0..n-1; found i in "
                    f"{sorted(noise)}")
  elif len(shapes) > 1:
    common = max(shapes, key=lambda s: sum(v.shape == s for _, v in noise.values()))
    problems.extend(f"misshaped: {k} {v.shape}; the other tables are {common}"
                    for k, v in noise.values() if v.shape != common)
  else:
    rest[STACKED_NOISE] = np.stack([noise[i][1] for i in range(len(noise))])
    return rest
  rest[STACKED_NOISE] = None  # Marks the target as accounted for (reported above).
  return rest


def convert_params(release: Mapping, target: Mapping[str, "jax.ShapeDtypeStruct"],
                   condition: str = "alpha", problems: Optional[List[str]] = None
                   ) -> Dict[str, np.ndarray]:
  """Release parameter tree -> {this project's '/'-joined path: array}, dtypes as in `target`.

  target: this project's flattened parameter shapes (under "params"). Raises ConversionError
  listing every unmapped, misshaped or missing key (plus any `problems` passed in).
  """
  problems = list(problems or [])
  flat = stack_noise_tables(engine.flat(dict(release)), problems)
  broken_noise = flat.get(STACKED_NOISE, 0) is None
  if broken_noise:
    del flat[STACKED_NOISE]
  out = engine.convert(flat, table(condition), target, problems, dtype="target")
  if broken_noise:
    problems[:] = [p for p in problems if not p.startswith("missing: noise_embed ")]
  engine.report(problems, "the release's generator parameters do not fit this config", FIX)
  return out


def build_state(config, release_params, metadata):
  """This project's TrainState for `config` holding the release generator's EMA parameters as
  its parameters and every EMA copy (optimizer moments zero, sample queues empty: training
  refills them, sampling ignores them)."""
  from mf_jax import train_state as ts  # pylint: disable=g-import-not-at-top
  from mf_jax.convert import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  if config.method != "drifting" or config.model.name != "dit_modern":
    raise engine.UserError("--config", f"method={config.method!r}, model.name="
                           f"{config.model.name!r}: the release's generator needs "
                           "method='drifting' and model.name='dit_modern'",
                           "use e.g. configs/imagenet_drift_l2_sota.py")
  abstract = workdir_lib.abstract_state(config)
  target = engine.flat(abstract.params["params"])
  model = ts.build_model(config)
  problems = check_model_config(metadata.get("model_config") or {}, config, model.dims())
  flat = convert_params(release_params, target, model.condition_names[0], problems)
  return workdir_lib.fresh_state(config, {"params": engine.nest(flat)},
                                 int(metadata.get("step", 0)), abstract=abstract)


def convert_to_workdir(src: str, config, workdir: str):
  """Reads the artifact at `src`, converts it, and writes the workdir's first checkpoint."""
  from mf_jax.convert import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  state = build_state(config, *read_release(src))
  return state, workdir_lib.write(state, config, workdir)
