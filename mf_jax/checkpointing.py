"""Orbax checkpoints: periodic and final saves, keep-K, resume from the newest readable one.

Orbax writes each step into a temporary folder and renames it when complete, so a save interrupted
half way is never listed as a checkpoint. A finalised checkpoint that fails to restore (a corrupted
file) is skipped with a warning and the next older one is tried.
"""
import os
import shutil

import jax
import orbax.checkpoint as ocp
from absl import logging


class Checkpointer:

  def __init__(self, workdir: str, keep: int, async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def save(self, step: int, state) -> None:
    self.manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def reached_preemption(self, step: int) -> bool:
    """True on every host once any host received a preemption notice (multi-host runs)."""
    return self.manager.reached_preemption(step)

  def restore_latest(self, target, shardings):
    """Restores the newest good checkpoint into `target`'s structure and shardings; None if none."""
    abstract = jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), target, shardings)
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("Checkpoint at step %d in %s cannot be restored (%s: %s); trying an older "
                        "one.", step, self.directory, type(e).__name__, str(e)[:300])
        self._set_aside(step)
    return None

  def _set_aside(self, step: int) -> None:
    """Moves an unreadable checkpoint out of the way (kept for inspection, not deleted), so the
    resumed run can save that step number again."""
    if jax.process_index() == 0:
      aside = os.path.join(os.path.dirname(self.directory), "checkpoints_unreadable")
      os.makedirs(aside, exist_ok=True)
      shutil.move(os.path.join(self.directory, str(step)), os.path.join(aside, str(step)))
    self.manager.reload()

  def latest_step(self):
    return self.manager.latest_step()

  def close(self) -> None:
    self.manager.close()
