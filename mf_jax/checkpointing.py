"""Orbax checkpoints: periodic and final saves, keep-K, integrity sums, resume from the newest good
one.

Orbax writes each step into a temporary folder and renames it when complete, so a save interrupted
half way is never listed as a checkpoint (its N.orbax-checkpoint-tmp-* folder is removed at the next
training start). The sha256 of each of a save's files is recorded in WORKDIR/checkpoint_sha256.json
as part of finishing it: once its files are complete and before its folder is renamed into place,
so every checkpoint a finished save left has its sums. A checkpoint without sums (older code, a
synchronous save killed in between, a deleted sums file) is "unverified": training restores it with
a warning naming it, reading modes refuse it unless eval.allow_unverified_checkpoint.

Training (mode="train") holds the workdir lock (mf_jax/workdir_lock.py) from here to close(). A
checkpoint that fails its check or fails to read is set aside to WORKDIR/checkpoints_unreadable/
(one log line) only when an older one restores, which shows the fault is the checkpoint's and not the
config's; when none restores, nothing moves and the run stops, so a run never restarts from step 0
while checkpoints exist. Reading modes (mode="sample"/"eval") never move anything: they restore
exactly eval.checkpoint_step (-1: the newest) or stop naming it, unless eval.allow_older_checkpoint
lets them skip to the newest good older one (named in the log).
"""
import contextlib
import glob
import json
import logging as py_logging
import os
import shutil
import threading

import jax
import orbax.checkpoint as ocp
from absl import logging

from mf_jax import workdir_lock
from mf_jax.checksum import file_sha256

SUMS_FILE = "checkpoint_sha256.json"
ASIDE = "checkpoints_unreadable"
TMP_MARK = ".orbax-checkpoint-tmp"
READING_MODES = ("sample", "eval", "frozen")  # "frozen": another run reads it (train.py).


class CheckpointError(RuntimeError):
  """The workdir's checkpoints or records are damaged, or not the ones asked for (exit status 3)."""


def read_json(path: str, fix: str):
  """The JSON value in a workdir file, None if the file is absent; CheckpointError naming the file
  and `fix` when it is empty or not JSON."""
  try:
    with open(path) as f:
      text = f.read()
  except (FileNotFoundError, NotADirectoryError):  # No such workdir yet: the workdir check says.
    return None
  try:
    return json.loads(text)
  except ValueError as e:
    what = "is empty" if not text.strip() else f"is not valid JSON ({e})"
    raise CheckpointError(f"{path} {what}; nothing was changed. Fix: {fix}") from None


def check_writable(workdir: str, mode: str) -> None:
  """Sampling and evaluation write into the workdir (samples/, metrics): checked before any work."""
  if mode in READING_MODES and os.path.isdir(workdir) and not os.access(workdir, os.W_OK | os.X_OK):
    raise PermissionError(f"--workdir={workdir} is not writable, and --mode={mode} writes its "
                          "results there: fix its permissions, or copy the run to a folder you "
                          "can write to.")


def for_mode(config, workdir: str, mode: str) -> "Checkpointer":
  """The checkpointer of a training, sampling or evaluation start, with its config's choices."""
  check_writable(workdir, mode)
  e = config.eval
  return Checkpointer(workdir, config.train.keep_checkpoints, mode=mode,
                      num_steps=config.train.num_steps, step=e.checkpoint_step,
                      allow_older=e.allow_older_checkpoint,
                      allow_unverified=e.allow_unverified_checkpoint)


# Orbax writes these step-level records (commit time stamps, a success marker) as it renames the
# folder into place, after the sums are taken; the arrays and their own metadata all lie under the
# item's folder and are hashed.
UNHASHED = ("_CHECKPOINT_METADATA", "commit_success.txt")


def step_digests(step_dir: str) -> dict:
  """{relative file path: sha256} of every file under one checkpoint's folder but UNHASHED."""
  out = {}
  for root, dirs, files in os.walk(step_dir):
    dirs.sort()
    for name in sorted(files):
      full = os.path.join(root, name)
      if os.path.relpath(full, step_dir) not in UNHASHED:
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


def remove_unfinished_saves(directory: str) -> None:
  """Deletes the N.orbax-checkpoint-tmp-* folders of saves that a kill interrupted (never listed as
  checkpoints; only a training start holding the workdir lock calls this)."""
  for path in sorted(glob.glob(os.path.join(directory, "*" + TMP_MARK + "*"))):
    shutil.rmtree(path, ignore_errors=True)
    logging.warning("Removed %s: an unfinished save of a run that was killed while saving.", path)


class Checkpointer:
  """mode: "train" (locks the workdir), "sample"/"eval" (read only, exact step), or None (tools
  that write or read a checkpoint of their own: set-aside fallback, no lock)."""

  def __init__(self, workdir: str, keep: int, async_save: bool = True, *, mode: str = None,
               num_steps: int = None, step: int = -1, allow_older: bool = False,
               allow_unverified: bool = False):
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, "checkpoints")
    self.mode, self.num_steps, self.step = mode, num_steps, step
    self.reading = mode in READING_MODES
    self.allow_older, self.allow_unverified = allow_older, allow_unverified
    self.sums_path = os.path.join(self.workdir, SUMS_FILE)
    self._locked = mode == "train" and jax.process_index() == 0 and workdir_lock.acquire(workdir)
    if self._locked:
      remove_unfinished_saves(self.directory)
    self._sums_guard = threading.Lock()
    self._unrecorded = []  # Steps saved by this run whose sums are not recorded yet.
    self._async = async_save
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=not self.reading, enable_async_checkpointing=async_save,
        async_options=ocp.AsyncOptions(post_finalization_callback=self._record_sums)
        if async_save else None)
    try:
      self._load_sums()  # A damaged sums file stops the start here, before any work.
      self.manager = ocp.CheckpointManager(self.directory, options=options)
    except BaseException:
      if self._locked:
        workdir_lock.release(workdir)
      raise

  # --- Saving --------------------------------------------------------------------------------

  def save(self, step: int, state) -> None:
    self.manager.wait_until_finished()
    with self._sums_guard:
      self._unrecorded.append(step)
    self.manager.save(step, args=ocp.args.StandardSave(state), force=True)
    if not self._async:
      self._record_sums()
    logging.info("Saving checkpoint %s", os.path.join(self.directory, str(step)))

  def wait(self) -> None:
    self.manager.wait_until_finished()
    self._record_sums()

  def _load_sums(self) -> dict:
    sums = read_json(self.sums_path, f"move it away (e.g. mv {self.sums_path} "
                     f"{self.sums_path}.bad): its checkpoints then count as unverified (training "
                     "resumes from them with a warning; sampling and evaluation need "
                     "--config.eval.allow_unverified_checkpoint=True).")
    if sums is None:
      return {}
    if not isinstance(sums, dict) or not all(isinstance(v, dict) for v in sums.values()):
      raise CheckpointError(f"{self.sums_path} is not a {{step: {{file: sha256}}}} record; nothing "
                            f"was changed. Fix: move it away (e.g. mv {self.sums_path} "
                            f"{self.sums_path}.bad): its checkpoints then count as unverified.")
    return sums

  def _folder(self, step: int):
    """The step's folder: final, or (while Orbax finishes the save) its temporary one."""
    final = os.path.join(self.directory, str(step))
    if os.path.isdir(final):
      return final
    tmp = sorted(glob.glob(os.path.join(self.directory, f"{step}{TMP_MARK}*")),
                 key=os.path.getmtime)
    return tmp[-1] if tmp else None

  def _record_sums(self) -> None:
    """Hashes the files of the steps saved and not yet recorded (Orbax calls this once a save's
    files are complete, before renaming its folder into place) and rewrites the sums file."""
    with self._sums_guard:
      if not self._unrecorded or jax.process_index() != 0:
        self._unrecorded = []
        return
      sums = self._load_sums()
      for step in self._unrecorded:
        folder = self._folder(step)
        if folder is not None:  # None: Orbax already removed it (keep_checkpoints).
          sums[str(step)] = step_digests(folder)
          logging.info("Checkpoint %d: sha256 of %d files recorded.", step, len(sums[str(step)]))
      listed = {n for n in os.listdir(self.directory) if n.isdigit()} | {
          str(s) for s in self._unrecorded}
      sums = {k: v for k, v in sums.items() if k in listed}
      tmp = self.sums_path + ".tmp"
      with open(tmp, "w") as f:
        json.dump(sums, f, indent=1, sort_keys=True)
      os.replace(tmp, self.sums_path)
      self._unrecorded = []

  # --- Restoring -----------------------------------------------------------------------------

  def recorded(self, step: int) -> bool:
    """Whether sums were recorded for the step (False: the checkpoint is unverified)."""
    return str(step) in self._load_sums()

  def verify(self, step: int):
    """None if the step's files match their recorded sha256 (or none were recorded), else why."""
    recorded = self._load_sums().get(str(step))
    if recorded is None:
      return None
    folder = os.path.join(self.directory, str(step))
    actual = step_digests(folder)
    for name in sorted((set(recorded) | set(actual)) - set(UNHASHED)):
      if recorded.get(name) != actual.get(name):
        what = ("missing" if name not in actual else "not recorded at save" if name not in recorded
                else "sha256 differs from the one recorded at save")
        return f"integrity check failed: file {name} {what}"
    return None

  def reached_preemption(self, step: int) -> bool:
    """True on every host once any host received a preemption notice (multi-host runs)."""
    return self.manager.reached_preemption(step)

  def _steps_to_try(self):
    steps = sorted(self.manager.all_steps(), reverse=True)
    if not self.reading or self.step is None or self.step < 0:
      return steps
    if self.step not in steps:
      raise CheckpointError(
          f"eval.checkpoint_step={self.step}: {self.directory} holds no checkpoint of that step "
          f"(it holds steps {sorted(steps)}). Fix: pass one of those, or -1 for the newest.")
    return [self.step]  # Exactly the step asked for: never another one.

  def _problem(self, step: int):
    """Why the step cannot be used (integrity, or unverified where that is refused), else None."""
    problem = self.verify(step)
    if problem is None and not self.recorded(step):
      if self.reading and not self.allow_unverified:
        return (f"unverified: no sha256 was recorded when it was saved (in {self.sums_path}), so "
                "damage would go unnoticed")
      logging.warning("Checkpoint %s is unverified (no sha256 recorded at save in %s): restoring "
                      "it without an integrity check.", os.path.join(self.directory, str(step)),
                      self.sums_path)
    return problem

  def _refuse(self, step: int, problem: str, newest: bool):
    which = "newest " if newest and (self.step is None or self.step < 0) else ""
    fixes = ["restore the checkpoint's files, or train again in a new --workdir"]
    if problem.startswith("unverified"):
      fixes.insert(0, "to use it anyway, pass --config.eval.allow_unverified_checkpoint=True")
    if self.step is None or self.step < 0:
      fixes.insert(0, "to use the newest good older checkpoint instead, pass "
                   "--config.eval.allow_older_checkpoint=True")
    reader = f"--mode={self.mode}" if self.mode != "frozen" else "a frozen network's workdir"
    return CheckpointError(
        f"{reader}: the {which}checkpoint {os.path.join(self.directory, str(step))} "
        f"cannot be used: {problem}. Nothing was moved, sampled or evaluated. Fix: "
        + "; or ".join(fixes) + ".")

  def restore_latest(self, target, shardings):
    """Restores the newest good checkpoint into `target`'s structure and shardings; None if none.

    Raises CheckpointError when checkpoints exist and none of them restores, and in reading modes
    when the step asked for does not (unless allow_older).
    """
    abstract = jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), target, shardings)
    failed = []
    for step in self._steps_to_try():
      problem = self._problem(step)
      if problem is None:
        try:
          with _quiet_async_errors():
            restored = self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as e:  # pylint: disable=broad-except
          first_line = (str(e).strip().splitlines() or [""])[0]
          problem = f"cannot be read ({type(e).__name__}: {first_line[:200]})"
      if problem is None:
        self._check_num_steps(step)
        for bad_step, why in failed:
          if self.reading:  # Allowed by allow_older; reading modes never move a checkpoint.
            logging.warning("Skipped checkpoint %s (%s): using step %d, as "
                            "eval.allow_older_checkpoint allows.",
                            os.path.join(self.directory, str(bad_step)), why, step)
          else:
            self._set_aside(bad_step, why, step)
        return restored
      if self.reading and not self.allow_older:
        self.close()
        raise self._refuse(step, problem, newest=not failed)
      logging.warning("Checkpoint %s: %s; trying an older one.",
                      os.path.join(self.directory, str(step)), problem)
      failed.append((step, problem))
    if failed:
      self.close()  # Its background threads would otherwise report on a closed loop.
      raise CheckpointError(
          f"None of the {len(failed)} checkpoints in {self.directory} could be restored ("
          + "; ".join(f"step {s}: {why}" for s, why in failed) + "). Nothing was moved. If this "
          "config differs from the one that trained the workdir (see its run_info/config_*.json), "
          "use that one; if the checkpoints are damaged, move them out of the way (e.g. to "
          + os.path.join(self.workdir, ASIDE) + ") to start again from step 0, or use a new "
          "--workdir.")
    return None

  def _check_num_steps(self, step: int) -> None:
    """Training to fewer steps than the workdir holds would do nothing and record a new start."""
    if self.mode == "train" and self.num_steps is not None and step > self.num_steps:
      from mf_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
      self.close()
      raise ConfigError(
          f"train.num_steps={self.num_steps}: --workdir={self.workdir} already holds step {step}, "
          "past it; nothing was trained or changed. Fix: pass --config.train.num_steps above "
          f"{step} to train further, use --mode=eval or --mode=sample to use the run, or use a new "
          "--workdir.")

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
    if self._locked:
      workdir_lock.release(self.workdir)
      self._locked = False
