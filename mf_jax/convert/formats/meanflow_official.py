"""The official MeanFlow JAX checkpoint (Gsunshine/meanflow) -> this project's TrainState.

The official trainer saves a Flax TrainState {step, params, opt_state, ema_params} with flax's
legacy checkpointing: one msgpack file `checkpoint_<step>` (the state dict of the TrainState), or,
with flax's Orbax backend, an Orbax folder. The DiT lives under `net/`; opt_state is optax.adamw's
(ScaleByAdamState(count, mu, nu), ...) under "0". Parameters, the EMA copy and both Adam moments
map by NAME_RULES onto this project's DiT (same layouts: no transposes), so training can resume.
The head count is not visible in the shapes: the config must name the same variant (MF-B/4:
model.variant='B/4').
"""
import os
import re
from typing import List, Tuple

import jax
import numpy as np
import optax

from mf_jax import train_state as ts
from mf_jax.convert import engine, readers
from mf_jax.convert import workdir as workdir_lib

_L = r"/_flax_linear/(kernel|bias)"
# (official path under net/, this project's path under params/); \1 is a block or a leaf name.
NAME_RULES = engine.rules(
    (r"x_embedder/proj/(kernel|bias)", r"patch_embed/\1"),
    (r"t_embedder/mlp/layers_0" + _L, r"t_embedder/mlp_in/\1"),
    (r"t_embedder/mlp/layers_2" + _L, r"t_embedder/mlp_out/\1"),
    (r"h_embedder/mlp/layers_0" + _L, r"t_minus_r_embedder/mlp_in/\1"),
    (r"h_embedder/mlp/layers_2" + _L, r"t_minus_r_embedder/mlp_out/\1"),
    (r"y_embedder/embedding_table/_flax_embedding/embedding", r"label_embedder/embedding"),
    (r"blocks/layers_(\d+)/adaLN_modulation/layers_1" + _L, r"block_\1/adaLN/\2"),
    (r"blocks/layers_(\d+)/attn/(qkv|proj)" + _L, r"block_\1/attn/\2/\3"),
    (r"blocks/layers_(\d+)/mlp/fc1" + _L, r"block_\1/mlp_in/\2"),
    (r"blocks/layers_(\d+)/mlp/fc2" + _L, r"block_\1/mlp_out/\2"),
    (r"final_layer/adaLN_modulation/layers_1" + _L, r"final_adaLN/\1"),
    (r"final_layer/linear" + _L, r"final_proj/\1"),
)
CHECKPOINT_FILE = re.compile(r"checkpoint_(\d+)$")
FIX = ("give the config of the same model (MF-B/4: configs/imagenet_b4.py; model.variant, "
       "data.image_size/channels/num_classes as trained)")


def map_name(official: str):
  """'blocks/layers_3/attn/qkv/_flax_linear/kernel' -> 'block_3/attn/qkv/kernel'; None if no rule."""
  return engine.map_name(official, NAME_RULES)[1]


def find_checkpoint(path: str) -> str:
  """A checkpoint file / Orbax folder itself, or the newest `checkpoint_<step>` inside a folder."""
  if not os.path.exists(path):
    raise engine.SourceError(path, "does not exist", "give the official checkpoint file "
                             "(checkpoint_<step>) or the folder that holds it (unzipped)")
  if os.path.isdir(path) and not readers.is_orbax(path):
    steps = [(int(m.group(1)), name) for name in os.listdir(path)
             if (m := CHECKPOINT_FILE.match(name))]
    if not steps:
      raise engine.SourceError(path, f"holds no checkpoint_<step> file (found "
                               f"{sorted(os.listdir(path))[:10]})",
                               "give the folder of the official run's checkpoints")
    path = os.path.join(path, max(steps)[1])
  return path


def read_official(path: str) -> dict:
  """The official TrainState's state dict (nested dicts of numpy arrays) from a file or folder."""
  path = find_checkpoint(path)
  return readers.read_orbax(path) if readers.is_orbax(path) else readers.read_msgpack(path)


def _net(tree, where: str, problems: List[str]) -> dict:
  """The `net` subtree of an official parameter tree; anything beside it is a problem."""
  if not isinstance(tree, dict) or "net" not in tree:
    found = sorted(tree)[:8] if isinstance(tree, dict) else type(tree).__name__
    problems.append(f"missing: {where} has no 'net' entry (found {found})")
    return {}
  problems.extend(f"unmapped: {where}/{k}" for k in sorted(set(tree) - {"net"}))
  return tree["net"]


def convert(official: dict, config) -> ts.TrainState:
  """Official state dict -> this project's TrainState for `config` (method 'meanflow', DiT).

  Raises engine.ConversionError listing every unmapped, misshaped or missing key.
  """
  if config.method != "meanflow" or config.model.name != "dit":
    raise engine.UserError("--config", f"method={config.method!r}, model.name="
                           f"{config.model.name!r}: the official MeanFlow checkpoint is a DiT "
                           "trained with method='meanflow'", "use configs/imagenet_b4.py")
  if len(config.ema_decays) != 1:
    raise engine.UserError("--config", f"ema_decays={tuple(config.ema_decays)}: the official "
                           "checkpoint holds one EMA copy (decay 0.9999)",
                           "set --config.ema_decays=(0.9999,)")
  abstract = workdir_lib.abstract_state(config)
  target = engine.flat(abstract.params["params"])

  problems: List[str] = []
  expected = {"step", "params", "ema_params", "opt_state"}
  problems.extend(f"unmapped: {k}" for k in sorted(set(official) - expected))
  problems.extend(f"missing: the checkpoint has no {k!r}" for k in sorted(expected - set(official)))
  mapped = lambda tree, where: engine.convert(_net(tree, where, problems), NAME_RULES, target,
                                              problems, prefix=f"{where}/net/", dtype="target")
  params = mapped(official.get("params", {}), "params")
  ema = mapped(official.get("ema_params", {}), "ema_params")
  adam = (official.get("opt_state") or {}).get("0", {})
  count = adam.get("count")
  moments = {k: mapped(adam.get(k, {}), f"opt_state/0/{k}") for k in ("mu", "nu")}
  leftovers = {k: v for k, v in (official.get("opt_state") or {}).items() if k != "0" and v}
  problems.extend(f"unmapped: opt_state/{k}" for k in sorted(leftovers))
  problems.extend(f"unmapped: opt_state/0/{k}" for k in sorted(set(adam) - {"count", "mu", "nu"}))
  if count is None:
    problems.append("missing: opt_state/0/count (Adam step count)")
  engine.report(problems, f"the official checkpoint does not fit model.variant="
                f"{config.model.variant!r} (data {config.data.image_size}x"
                f"{config.data.image_size}x{config.data.channels}, {config.data.num_classes} "
                "classes)", FIX)

  nest = lambda flat: {"params": engine.nest(flat)}

  def fill_adam(node):
    if isinstance(node, optax.ScaleByAdamState):
      return optax.ScaleByAdamState(count=np.asarray(count, node.count.dtype),
                                    mu=nest(moments["mu"]), nu=nest(moments["nu"]))
    return workdir_lib.zeros(node)

  opt_state = jax.tree_util.tree_map(
      fill_adam, abstract.opt_state, is_leaf=lambda n: isinstance(n, optax.ScaleByAdamState))
  return workdir_lib.fresh_state(config, nest(params), int(official["step"]),
                                 ema_params=(nest(ema),), opt_state=opt_state, abstract=abstract)


def convert_to_workdir(checkpoint: str, config, workdir: str) -> Tuple[ts.TrainState, str]:
  state = convert(read_official(checkpoint), config)
  return state, workdir_lib.write(state, config, workdir)
