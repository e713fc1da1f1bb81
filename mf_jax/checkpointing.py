"""Orbax checkpoints: periodic and final saves, keep-K, integrity sums, resume from the newest good one.

Orbax writes each step into a temporary folder and renames it when complete, so a save interrupted
half way is never listed as a checkpoint. Once a save has finished (checked at the next save and at
wait()), the sha256 of each of its files is recorded in WORKDIR/checkpoint_sha256.json; a restore
first compares them. A checkpoint that fails that check or fails to read is set aside to
WORKDIR/checkpoints_unreadable/ (one log line) only when an older one restores, which shows the
fault is the checkpoint's and not the config's; when none restores, nothing moves and the run
stops, so a run never restarts from step 0 while checkpoints exist.
"""
import contextlib
import json
import logging as py_logging
import os
import shutil

import jax
import orbax.checkpoint as ocp
from absl import logging

from mf_jax.checksum import file_sha256

SUMS_FILE = "checkpoint_sha256.json"
ASIDE = "checkpoints_unreadable"


class CheckpointError(RuntimeError):
  """No checkpoint of a workdir that has some could be restored."""


def step_digests(step_dir: str) -> dict:
  """{relative file path: sha256} of every file under one checkpoint's folder."""
  out = {}
  for root, dirs, files in os.walk(step_dir):
    dirs.sort()
    for name in sorted(files):
      full = os.path.join(root, name)
      out[os.path.relpath(full, step_dir)] = file_sha256(full)
  return out


@contextlib.contextmanager
def _quiet_async_errors():
  """A failed restore leaves Orbax's asyncio tasks to report the same error many times over."""
  logger = py_logging.getLogger("asyncio")
  level = logger.level
  logger.setLevel(py_logging.CRITICAL)
  try:
    yield
  finally:
    logger.setLevel(level)


class Checkpointer:

  def __init__(self, workdir: str, keep: int, async_save: bool = True):
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, "checkpoints")
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options)
    self.sums_path = os.path.join(self.workdir, SUMS_FILE)
    self._unrecorded = []  # Steps saved by this run whose sums are not recorded yet.

  # --- Saving --------------------------------------------------------------------------------

  def save(self, step: int, state) -> None:
    self.manager.wait_until_finished()  # The previous save is final: record its sums first.
    self._record_sums()
    self.manager.save(step, args=ocp.args.StandardSave(state), force=True)
    self._unrecorded.append(step)
    logging.info("Saving checkpoint %s", os.path.join(self.directory, str(step)))

  def wait(self) -> None:
    self.manager.wait_until_finished()
    self._record_sums()

  def _load_sums(self) -> dict:
    if not os.path.isfile(self.sums_path):
      return {}
    with open(self.sums_path) as f:
      return json.load(f)

  def _record_sums(self) -> None:
    if not self._unrecorded or jax.process_index() != 0:
      self._unrecorded = []
      return
    sums = self._load_sums()
    for step in self._unrecorded:
      folder = os.path.join(self.directory, str(step))
      if os.path.isdir(folder):  # Orbax may already have removed it (keep_checkpoints).
        sums[str(step)] = step_digests(folder)
        logging.info("Checkpoint saved: %s (sha256 of %d files recorded)", folder,
                     len(sums[str(step)]))
    existing = {str(s) for s in self.manager.all_steps()}
    sums = {k: v for k, v in sums.items() if k in existing}
    tmp = self.sums_path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(sums, f, indent=1, sort_keys=True)
    os.replace(tmp, self.sums_path)
    self._unrecorded = []

  # --- Restoring -----------------------------------------------------------------------------

  def verify(self, step: int):
    """None if the step's files match their recorded sha256 (or none were recorded), else why."""
    recorded = self._load_sums().get(str(step))
    if recorded is None:
      return None
    folder = os.path.join(self.directory, str(step))
    actual = step_digests(folder)
    for name in sorted(set(recorded) | set(actual)):
      if recorded.get(name) != actual.get(name):
        what = ("missing" if name not in actual else "not recorded at save" if name not in recorded
                else "sha256 differs from the one recorded at save")
        return f"integrity check failed: file {name} {what}"
    return None

  def reached_preemption(self, step: int) -> bool:
    """True on every host once any host received a preemption notice (multi-host runs)."""
    return self.manager.reached_preemption(step)

  def restore_latest(self, target, shardings):
    """Restores the newest good checkpoint into `target`'s structure and shardings; None if none.

    Raises CheckpointError when checkpoints exist and none of them restores.
    """
    abstract = jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), target, shardings)
    failed = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      problem = self.verify(step)
      if problem is None:
        try:
          with _quiet_async_errors():
            restored = self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as e:  # pylint: disable=broad-except
          first_line = (str(e).strip().splitlines() or [""])[0]
          problem = f"cannot be read ({type(e).__name__}: {first_line[:200]})"
      if problem is None:
        for bad_step, why in failed:
          self._set_aside(bad_step, why, step)
        return restored
      logging.warning("Checkpoint %s: %s; trying an older one.",
                      os.path.join(self.directory, str(step)), problem)
      failed.append((step, problem))
    if failed:
      self.manager.close()  # Its background threads would otherwise report on a closed loop.
      raise CheckpointError(
          f"None of the {len(failed)} checkpoints in {self.directory} could be restored ("
          + "; ".join(f"step {s}: {why}" for s, why in failed) + "). Nothing was moved. If this "
          "config differs from the one that trained the workdir (see its run_info/config_*.json), "
          "use that one; if the checkpoints are damaged, move them out of the way (e.g. to "
          + os.path.join(self.workdir, ASIDE) + ") to start again from step 0, or use a new "
          "--workdir.")
    return None

  def _set_aside(self, step: int, why: str, resumed_from: int) -> None:
    """Moves a bad checkpoint out of the way (kept for inspection, never deleted), so the resumed
    run can save that step number again."""
    source = os.path.join(self.directory, str(step))
    aside = os.path.join(self.workdir, ASIDE)
    dest, n = os.path.join(aside, str(step)), 1
    while os.path.exists(dest):  # An earlier one of the same step: never nest into it.
      dest, n = os.path.join(aside, f"{step}.{n}"), n + 1
    if jax.process_index() == 0:
      os.makedirs(aside, exist_ok=True)
      shutil.move(source, dest)
    logging.warning("Set aside checkpoint %s (%s) to %s; resuming from step %d.", source, why, dest,
                    resumed_from)
    self.manager.reload()

  def latest_step(self):
    return self.manager.latest_step()

  def close(self) -> None:
    self.manager.close()
