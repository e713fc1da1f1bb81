"""The official MeanFlow JAX checkpoint (Gsunshine/meanflow) -> this project's Orbax workdir.

The official trainer saves a Flax TrainState {step, params, opt_state, ema_params} with flax's
legacy checkpointing: one msgpack file `checkpoint_<step>` (the state dict of the TrainState). The
DiT lives under `net/`; opt_state is optax.adamw's (ScaleByAdamState(count, mu, nu), ...) under
"0". This module reads that file with flax.serialization (not Flax's legacy checkpoint API), maps every
parameter name by rule onto this project's DiT, checks every shape, and writes an Orbax checkpoint
that `--mode=eval` / `--mode=sample` restore (and that training can resume from). An Orbax-format
official checkpoint folder (flax's Orbax backend) is read too.

  python -m mf_jax.convert.meanflow_official --config=configs/imagenet_b4.py \
      --checkpoint=/ckpts/mf_b4 --workdir=/runs/mf_b4_official

The network's head count is not visible in the shapes: the config must name the same variant
(MF-B/4: model.variant='B/4').
"""
import os
import re
from typing import Dict, List, Tuple

import jax
import numpy as np
import optax
from flax import serialization, traverse_util

from mf_jax import checkpointing
from mf_jax import train_state as ts

# (official path under net/, this project's path under params/), first match wins; \1 is a block.
NAME_RULES = (
    (r"x_embedder/proj/(kernel|bias)", r"patch_embed/\1"),
    (r"t_embedder/mlp/layers_0/_flax_linear/(kernel|bias)", r"t_embedder/mlp_in/\1"),
    (r"t_embedder/mlp/layers_2/_flax_linear/(kernel|bias)", r"t_embedder/mlp_out/\1"),
    (r"h_embedder/mlp/layers_0/_flax_linear/(kernel|bias)", r"t_minus_r_embedder/mlp_in/\1"),
    (r"h_embedder/mlp/layers_2/_flax_linear/(kernel|bias)", r"t_minus_r_embedder/mlp_out/\1"),
    (r"y_embedder/embedding_table/_flax_embedding/embedding", r"label_embedder/embedding"),
    (r"blocks/layers_(\d+)/adaLN_modulation/layers_1/_flax_linear/(kernel|bias)", r"block_\1/adaLN/\2"),
    (r"blocks/layers_(\d+)/attn/(qkv|proj)/_flax_linear/(kernel|bias)", r"block_\1/attn/\2/\3"),
    (r"blocks/layers_(\d+)/mlp/fc1/_flax_linear/(kernel|bias)", r"block_\1/mlp_in/\2"),
    (r"blocks/layers_(\d+)/mlp/fc2/_flax_linear/(kernel|bias)", r"block_\1/mlp_out/\2"),
    (r"final_layer/adaLN_modulation/layers_1/_flax_linear/(kernel|bias)", r"final_adaLN/\1"),
    (r"final_layer/linear/_flax_linear/(kernel|bias)", r"final_proj/\1"),
)
CHECKPOINT_FILE = re.compile(r"checkpoint_(\d+)$")


def map_name(official: str):
  """'blocks/layers_3/attn/qkv/_flax_linear/kernel' -> 'block_3/attn/qkv/kernel'; None if no rule."""
  for pattern, replacement in NAME_RULES:
    if re.fullmatch(pattern, official):
      return re.sub(pattern, replacement, official)
  return None


def find_checkpoint(path: str) -> str:
  """A checkpoint file / Orbax folder itself, or the newest `checkpoint_<step>` inside a folder."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"--checkpoint={path!r} does not exist: give the official checkpoint "
                            "file (checkpoint_<step>) or the folder that holds it (unzipped).")
  if os.path.isdir(path) and not _is_orbax(path):
    steps = [(int(m.group(1)), name) for name in os.listdir(path)
             if (m := CHECKPOINT_FILE.match(name))]
    if not steps:
      raise FileNotFoundError(f"--checkpoint={path!r} holds no checkpoint_<step> file: "
                              f"found {sorted(os.listdir(path))[:10]}.")
    path = os.path.join(path, max(steps)[1])
  return path


def _is_orbax(path: str) -> bool:
  return os.path.isdir(path) and any(
      os.path.exists(os.path.join(path, f)) for f in ("_METADATA", "manifest.ocdbt", "checkpoint"))


def read_official(path: str) -> dict:
  """The official TrainState's state dict (nested dicts of numpy arrays) from a file or folder."""
  path = find_checkpoint(path)
  if _is_orbax(path):
    import orbax.checkpoint as ocp
    return ocp.PyTreeCheckpointer().restore(os.path.abspath(path))
  with open(path, "rb") as f:
    return serialization.msgpack_restore(f.read())


def _map_tree(official_net: dict, target_flat: Dict[str, jax.ShapeDtypeStruct], where: str,
              problems: List[str]) -> Dict[str, np.ndarray]:
  """Maps one official `net` tree onto target paths; appends every problem to `problems`."""
  out, misshaped = {}, set()
  for name, value in traverse_util.flatten_dict(official_net, sep="/").items():
    ours = map_name(name)
    if ours is None or ours not in target_flat:
      problems.append(f"unmapped: {where}/net/{name} {np.shape(value)}"
                      + (f" (-> {ours}, not in this model)" if ours else ""))
      continue
    want = tuple(target_flat[ours].shape)
    if tuple(np.shape(value)) != want:
      problems.append(f"misshaped: {where}/net/{name} {tuple(np.shape(value))} -> {ours} {want}")
      misshaped.add(ours)
      continue
    out[ours] = np.asarray(value, target_flat[ours].dtype)
  for ours in sorted(set(target_flat) - set(out) - misshaped):
    problems.append(f"missing: {where} has nothing for {ours} {tuple(target_flat[ours].shape)}")
  return out


def _net(tree: dict, where: str, problems: List[str]) -> dict:
  """The `net` subtree of an official parameter tree; anything beside it is a problem."""
  if not isinstance(tree, dict) or "net" not in tree:
    found = sorted(tree)[:8] if isinstance(tree, dict) else type(tree).__name__
    problems.append(f"missing: {where} has no 'net' entry (found {found})")
    return {}
  extra = sorted(set(tree) - {"net"})
  problems.extend(f"unmapped: {where}/{k}" for k in extra)
  return tree["net"]


def convert(official: dict, config) -> ts.TrainState:
  """Official state dict -> this project's TrainState for `config` (method 'meanflow', DiT).

  Raises ValueError listing every unmapped, misshaped or missing key, before anything is written.
  """
  if config.method != "meanflow" or config.model.name != "dit":
    raise ValueError(f"method={config.method!r}, model.name={config.model.name!r}: the official "
                     "MeanFlow checkpoint is a DiT trained with method='meanflow'.")
  if len(config.ema_decays) != 1:
    raise ValueError(f"ema_decays={tuple(config.ema_decays)}: the official checkpoint holds one EMA "
                     "copy (decay 0.9999); set ema_decays=(0.9999,).")
  model, optimizer = ts.build_model(config), ts.make_optimizer(config)
  abstract = jax.eval_shape(lambda k: ts.init_state(config, model, optimizer, k), jax.random.key(0))
  target = traverse_util.flatten_dict(abstract.params["params"], sep="/")

  problems: List[str] = []
  expected = {"step", "params", "ema_params", "opt_state"}
  problems.extend(f"unmapped: {k}" for k in sorted(set(official) - expected))
  problems.extend(f"missing: the checkpoint has no {k!r}" for k in sorted(expected - set(official)))
  params = _map_tree(_net(official.get("params", {}), "params", problems), target, "params", problems)
  ema = _map_tree(_net(official.get("ema_params", {}), "ema_params", problems), target, "ema_params",
                  problems)
  adam = (official.get("opt_state") or {}).get("0", {})
  count = adam.get("count")
  moments = {k: _map_tree(_net(adam.get(k, {}), f"opt_state/0/{k}", problems), target,
                          f"opt_state/0/{k}", problems) for k in ("mu", "nu")}
  leftovers = {k: v for k, v in (official.get("opt_state") or {}).items() if k != "0" and v}
  problems.extend(f"unmapped: opt_state/{k}" for k in sorted(leftovers))
  problems.extend(f"unmapped: opt_state/0/{k}" for k in sorted(set(adam) - {"count", "mu", "nu"}))
  if count is None:
    problems.append("missing: opt_state/0/count (Adam step count)")
  if problems:
    raise ValueError(f"The official checkpoint does not fit model.variant={config.model.variant!r} "
                     f"(data {config.data.image_size}x{config.data.image_size}x{config.data.channels}"
                     f", {config.data.num_classes} classes); {len(problems)} problem(s):\n  "
                     + "\n  ".join(problems))

  nest = lambda flat: {"params": traverse_util.unflatten_dict(flat, sep="/")}
  new_params = nest(params)

  def fill_adam(node):
    if isinstance(node, optax.ScaleByAdamState):
      return optax.ScaleByAdamState(count=np.asarray(count, node.count.dtype),
                                    mu=nest(moments["mu"]), nu=nest(moments["nu"]))
    return jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), node)

  opt_state = jax.tree_util.tree_map(
      fill_adam, abstract.opt_state, is_leaf=lambda n: isinstance(n, optax.ScaleByAdamState))
  return ts.TrainState(step=np.asarray(official["step"], np.int32), params=new_params,
                       opt_state=opt_state, ema_params=(nest(ema),),
                       nonfinite_step=np.asarray(-1, np.int32), aux=None)


def write_workdir(state: ts.TrainState, config, workdir: str) -> str:
  """Saves `state` as the workdir's checkpoint at its step; returns the checkpoint folder."""
  ckpt = checkpointing.Checkpointer(workdir, config.train.keep_checkpoints, async_save=False)
  if ckpt.latest_step() is not None:
    ckpt.close()
    raise FileExistsError(f"--workdir={workdir} already holds checkpoints (step "
                          f"{ckpt.latest_step()}): convert into an empty workdir.")
  ckpt.save(int(state.step), state)
  ckpt.wait()
  ckpt.close()
  return ckpt.directory


def convert_to_workdir(checkpoint: str, config, workdir: str) -> Tuple[ts.TrainState, str]:
  state = convert(read_official(checkpoint), config)
  return state, write_workdir(state, config, workdir)


def main(argv):
  del argv
  from absl import flags, logging
  f = flags.FLAGS
  state, directory = convert_to_workdir(f.checkpoint, f.config, f.workdir)
  logging.info("Converted the official checkpoint %s (step %d, %d parameters) into %s.",
               f.checkpoint, int(state.step),
               sum(int(np.size(p)) for p in jax.tree_util.tree_leaves(state.params)), directory)


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "This project's config of the same model "
                                  "(MF-B/4: configs/imagenet_b4.py).", lock_config=True)
  flags.DEFINE_string("checkpoint", None, "Official checkpoint file checkpoint_<step>, or its folder.")
  flags.DEFINE_string("workdir", None, "Empty workdir to write; then run main.py --mode=eval on it.")
  flags.mark_flags_as_required(["config", "checkpoint", "workdir"])
  app.run(main)
