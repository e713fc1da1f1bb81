"""Parameter names of the official iMF network (Lyy-iiis/imeanflow, models/imfDiT.py) mapped to
mf_jax.models.dit_incontext.InContextDiT's, by the converter's table (one source of truth:
mf_jax/convert/formats/imf_official.py, ORBAX_RULES). Shapes are the same on both sides (Flax
layouts).

Paths are '/'-joined keys below the network (the official trainer stores them under
`params/net/` and `ema_params/net/`).
"""
from typing import Mapping

import numpy as np
from flax import traverse_util

from mf_jax.convert import engine
from mf_jax.convert.formats import imf_official


def our_name(official: str) -> str:
  """Our path for an official path (below `net/`); ValueError naming the path if unknown."""
  rule, ours = engine.map_name(official, imf_official.ORBAX_RULES)
  if rule is None:
    raise ValueError(f"official iMF parameter {official!r} has no counterpart in InContextDiT.")
  return ours


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
