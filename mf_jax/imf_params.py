"""Parameter names of the official iMF network (Lyy-iiis/imeanflow, models/imfDiT.py) mapped to
mf_jax.models.dit_incontext.InContextDiT's. Shapes are the same on both sides (Flax layouts).

Paths are '/'-joined keys below the network (the official trainer stores them under
`params/net/` and `ema_params/net/`). Self-contained rules, so a converter can wrap them.
"""
import re
from typing import Mapping

import numpy as np
from flax import traverse_util

# (official pattern, our replacement), tried in order; the first full match wins.
_RULES = (
    (r"x_embedder/proj/(kernel|bias)", r"patch_embed/\1"),
    (r"(h|omega)_embedder/mlp/layers_0/_flax_linear/(kernel|bias)", r"\1_embedder/mlp_in/\2"),
    (r"(h|omega)_embedder/mlp/layers_2/_flax_linear/(kernel|bias)", r"\1_embedder/mlp_out/\2"),
    (r"cfg_t_start_embedder/mlp/layers_0/_flax_linear/(kernel|bias)", r"t_min_embedder/mlp_in/\1"),
    (r"cfg_t_start_embedder/mlp/layers_2/_flax_linear/(kernel|bias)", r"t_min_embedder/mlp_out/\1"),
    (r"cfg_t_end_embedder/mlp/layers_0/_flax_linear/(kernel|bias)", r"t_max_embedder/mlp_in/\1"),
    (r"cfg_t_end_embedder/mlp/layers_2/_flax_linear/(kernel|bias)", r"t_max_embedder/mlp_out/\1"),
    (r"y_embedder/embedding_table/_flax_embedding/embedding", r"label_embedder/embedding"),
    (r"(class|omega|t_min|t_max|time)_tokens", r"\1_tokens"),
    (r"(u|v)_final_layer/norm/kernel", r"\1_final_norm/scale"),
    (r"(u|v)_final_layer/linear/_flax_linear/(kernel|bias)", r"\1_final/\2"),
)
_BLOCKS = {"shared_blocks": "shared_block", "u_heads": "u_block", "v_heads": "v_block"}
_BLOCK_RULES = (
    (r"attn/(q|k|v|out)_proj/_flax_linear/kernel", r"attn/\1/kernel"),
    (r"attn/(q|k)_norm/kernel", r"attn/\1_norm/scale"),
    (r"norm(1|2)/kernel", r"norm\1/scale"),
    (r"mlp/w1/_flax_linear/kernel", r"mlp_gate/kernel"),
    (r"mlp/w3/_flax_linear/kernel", r"mlp_up/kernel"),
    (r"mlp/w2/_flax_linear/kernel", r"mlp_down/kernel"),
    (r"(attn|mlp)_scale", r"\1_scale"),
)


def our_name(official: str) -> str:
  """Our path for an official path (below `net/`); ValueError naming the path if unknown."""
  m = re.fullmatch(r"(shared_blocks|u_heads|v_heads)_(\d+)/(.+)", official)
  if m:
    for pattern, repl in _BLOCK_RULES:
      if re.fullmatch(pattern, m.group(3)):
        return f"{_BLOCKS[m.group(1)]}_{m.group(2)}/" + re.sub(pattern, repl, m.group(3))
  else:
    for pattern, repl in _RULES:
      if re.fullmatch(pattern, official):
        return re.sub(pattern, repl, official)
  raise ValueError(f"official iMF parameter {official!r} has no counterpart in InContextDiT.")


def from_official(tree: Mapping, v_head: bool = True) -> dict:
  """Nested official network params -> nested InContextDiT params (numpy arrays).

  v_head=False (the inference model) drops the v head's blocks and final layer.
  """
  flat = traverse_util.flatten_dict(dict(tree), sep="/")
  out = {}
  for name, value in flat.items():
    ours = our_name(name)
    if not v_head and ours.startswith("v_"):
      continue
    out[ours] = np.asarray(value)
  return traverse_util.unflatten_dict(out, sep="/")
