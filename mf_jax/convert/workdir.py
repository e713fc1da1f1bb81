"""Converted parameters -> this project's TrainState -> the first Orbax checkpoint of a workdir.

One way for every format: `fresh_state` fills a TrainState shaped like `ts.init_state(config)`
(jax.eval_shape, nothing allocated) with the converted parameters, every EMA copy equal to them
unless given, the optimizer's initial state and zero method state (`aux`: sample queues, frozen
encoders) unless given; `write` saves it with the trainer's own Checkpointer into an empty workdir,
so `main.py --mode=eval/sample` restore it and training resumes from it.
"""
import os
from typing import Any, Callable, Optional, Sequence, Tuple

import jax
import numpy as np

from mf_jax import checkpointing
from mf_jax import ema as ema_lib
from mf_jax import train_state as ts
from mf_jax.convert import engine


def zeros(abstract):
  return jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), abstract)


def abstract_state(config) -> ts.TrainState:
  """The TrainState `config` trains, as ShapeDtypeStructs."""
  model, optimizer = ts.build_model(config), ts.make_optimizer(config)
  return jax.eval_shape(lambda k: ts.init_state(config, model, optimizer, k), jax.random.key(0))


def fresh_state(config, params, step: int = 0, ema_params: Optional[Sequence[Any]] = None,
                opt_state=None, abstract: Optional[ts.TrainState] = None) -> ts.TrainState:
  """A TrainState of `config` holding `params` ({"params": tree}), cast to the model's dtypes."""
  abstract = abstract_state(config) if abstract is None else abstract
  cast = lambda tree: jax.tree_util.tree_map(lambda p, a: np.asarray(p, a.dtype), tree,
                                             abstract.params)
  params = cast(params)
  ema = tuple(cast(e) for e in ema_params) if ema_params is not None else tuple(
      params for _ in range(ema_lib.num_emas(config)))
  if opt_state is None:  # The optimizer's own start (zeros, except e.g. Muon's coefficients).
    opt_state = jax.device_get(ts.make_optimizer(config).init(params))
  return ts.TrainState(step=np.asarray(step, np.int32), params=params, opt_state=opt_state,
                       ema_params=ema, nonfinite_step=np.asarray(-1, np.int32),
                       aux=zeros(abstract.aux))


def write(state: ts.TrainState, config, workdir: str) -> str:
  """Saves `state` as the workdir's checkpoint at its step; returns the checkpoint folder.
  engine.UserError if the workdir already holds a checkpoint (nothing is overwritten)."""
  ckpt = checkpointing.Checkpointer(workdir, config.train.keep_checkpoints, async_save=False)
  if ckpt.latest_step() is not None:
    ckpt.close()
    raise engine.UserError(f"--workdir={workdir}", f"already holds checkpoints (step "
                           f"{ckpt.latest_step()})", "convert into an empty workdir")
  ckpt.save(int(state.step), state)
  ckpt.wait()
  ckpt.close()
  return ckpt.directory


def parameter_count(tree) -> int:
  return sum(int(np.size(p)) for p in jax.tree_util.tree_leaves(tree))


def release_to_workdir(path: str, config, workdir: str, convert: Callable, expected: str
                       ) -> Tuple[ts.TrainState, str, str]:
  """(state, note, checkpoint folder): convert(path, config) -> (state, note), written as the
  workdir's first checkpoint; a missing `path` is named first (`expected`: what to give)."""
  if not os.path.exists(path):
    raise engine.SourceError(path, "does not exist", f"give {expected}")
  state, note = convert(path, config)
  return state, note, write(state, config, workdir)
