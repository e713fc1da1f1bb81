"""Reliability as a user meets it: reading modes never fall back silently, one trainer per workdir,
checksums recorded as each save finishes, damaged workdir files named, one error style.

One tiny training run (checkpoints at steps 2 and 4) is shared by the in-process tests, each of
which works on a copy; the subprocess tests start main.py as a user does.
"""
import json
import os
import signal
import subprocess
import sys
import time
import types

import jax
import numpy as np
import pytest

from configs import tiny
from mf_jax import checkpointing, train
from mf_jax import train_state as ts
from workdirs import flip_one_bit, snapshot, tiny_config, trained, workdir  # noqa: F401  (fixtures)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.py")


def main_py(workdir, *flags, timeout=300):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), f"--config={TINY}",
                         f"--workdir={workdir}", *flags], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)


def launch(workdir, *flags, log=None):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  return subprocess.Popen([sys.executable, os.path.join(ROOT, "main.py"), f"--config={TINY}",
                           f"--workdir={workdir}", *flags], cwd=ROOT, env=env,
                          stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT)


def logged_steps(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  return [json.loads(l)["step"] for l in open(path) if '"loss"' in l]


def checkpoint_steps(workdir):
  folder = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(folder) if d.isdigit()) if os.path.isdir(folder) else []


# --- 1. Reading modes use exactly the checkpoint asked for ----------------------------------------

def test_eval_with_damaged_newest_checkpoint_exits_3_naming_it_and_moves_nothing(workdir):
  flip_one_bit(os.path.join(workdir, "checkpoints", "4"))
  before = snapshot(workdir)
  proc = main_py(workdir, "--mode=eval", "--config.eval.features=pixels")
  assert proc.returncode == 3, proc.stderr[-2000:]
  assert os.path.join(workdir, "checkpoints", "4") in proc.stderr
  assert "allow_older_checkpoint" in proc.stderr and "Traceback" not in proc.stderr
  assert snapshot(workdir) == before  # Nothing moved, nothing evaluated or appended.


def test_sample_with_damaged_newest_checkpoint_refuses_or_uses_the_explicit_fallback(workdir):
  flip_one_bit(os.path.join(workdir, "checkpoints", "4"))
  before = snapshot(workdir)
  with pytest.raises(checkpointing.CheckpointError, match=r"newest checkpoint .*checkpoints/4 "
                     r"cannot be used: integrity check failed.*Nothing was moved"):
    train.sample_to_files(tiny_config(), workdir)
  assert snapshot(workdir) == before
  config = tiny_config()
  config.eval.allow_older_checkpoint = True
  out = train.sample_to_files(config, workdir)
  assert os.path.basename(out).startswith("step_00000002_")  # The older one, as asked.
  assert checkpoint_steps(workdir) == [2, 4]  # Still nothing moved.
  assert not os.path.exists(os.path.join(workdir, checkpointing.ASIDE))


def test_reading_mode_restores_exactly_the_step_asked_for(workdir):
  config = tiny_config()
  config.eval.checkpoint_step = 2
  state, *_ = train.restore_trained(config, workdir, "sample")
  assert int(state.step) == 2
  config.eval.checkpoint_step = 3
  with pytest.raises(checkpointing.CheckpointError, match=r"checkpoint_step=3.*steps \[2, 4\]"):
    train.restore_trained(config, workdir, "eval")


# --- 2. One trainer per workdir -------------------------------------------------------------------

def test_second_trainer_refuses_and_the_first_finishes(tmp_path):
  workdir = str(tmp_path / "shared")
  with open(tmp_path / "first.log", "w") as log:
    first = launch(workdir, "--config.train.num_steps=100000", "--config.train.log_every=1",
                   "--config.train.checkpoint_every=100000", log=log)
    try:
      deadline = time.time() + 300
      while len(logged_steps(workdir)) < 2:
        assert first.poll() is None, open(tmp_path / "first.log").read()[-2000:]
        assert time.time() < deadline, "the first trainer did not start in time"
        time.sleep(0.5)
      second = main_py(workdir, "--config.train.num_steps=100000", "--config.train.log_every=1",
                       "--config.train.checkpoint_every=100000", timeout=150)
      assert first.poll() is None  # Still training while the second was refused.
    finally:
      first.send_signal(signal.SIGTERM)
      rc = first.wait(timeout=120)
  assert second.returncode == 2, second.stderr[-2000:]
  assert f"pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
  assert rc == 0
  steps = logged_steps(workdir)
  assert steps == list(range(1, len(steps) + 1))  # Every step once.
  # The lock died with its holder: the next trainer resumes without anything to clean up.
  config = tiny_config(num_steps=checkpoint_steps(workdir)[-1] + 1)
  state = train.train_and_evaluate(config, workdir)
  assert int(state.step) == config.train.num_steps


def test_lock_of_a_killed_process_is_free_and_a_live_one_is_named(tmp_path):
  from mf_jax import workdir_lock
  child = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); "
       "from mf_jax import workdir_lock; workdir_lock.acquire(sys.argv[2]); print('held', "
       "flush=True); time.sleep(600)", ROOT, str(tmp_path)], stdout=subprocess.PIPE, text=True)
  try:
    assert child.stdout.readline().strip() == "held"
    assert f"pid {child.pid}" in workdir_lock.holder(str(tmp_path))
    with pytest.raises(workdir_lock.WorkdirBusy, match=f"pid {child.pid}"):
      workdir_lock.acquire(str(tmp_path))
  finally:
    child.kill()
    child.wait()
  assert workdir_lock.holder(str(tmp_path)) is None  # Stale file, no live holder.
  with workdir_lock.hold(str(tmp_path)):
    assert workdir_lock.holder(str(tmp_path)) is not None
  assert workdir_lock.holder(str(tmp_path)) is None


# --- 3. Checksums recorded as each save finishes; a byte-level state hash -------------------------

def test_killed_runs_newest_checkpoint_is_verified_on_resume(tmp_path):
  """Killed right after its first save, long before the next one: the sums of that save must
  already be recorded, so a byte flipped in it afterwards is caught on resume."""
  workdir = str(tmp_path / "killed")
  proc = launch(workdir, "--config.train.num_steps=100000", "--config.train.log_every=1",
                "--config.train.checkpoint_every=20")
  try:
    deadline = time.time() + 300
    while not checkpoint_steps(workdir):
      assert proc.poll() is None and time.time() < deadline
      time.sleep(0.05)
  finally:
    proc.kill()  # SIGKILL: no handler, no final wait() that would record pending sums.
    proc.wait()
  assert checkpoint_steps(workdir) == [20]
  with open(os.path.join(workdir, checkpointing.SUMS_FILE)) as f:
    assert "20" in json.load(f)  # Recorded as that save finished, not at the next save.
  ckpt = checkpointing.Checkpointer(workdir, keep=3)
  assert ckpt.verify(20) is None
  ckpt.close()
  flip_one_bit(os.path.join(workdir, "checkpoints", "20"))
  before = snapshot(workdir)
  with pytest.raises(checkpointing.CheckpointError, match=r"step 20: integrity check failed"):
    train.train_and_evaluate(tiny_config(num_steps=21), workdir)
  assert {k: v for k, v in snapshot(workdir).items() if k != "train.lock"} == {
      k: v for k, v in before.items() if k != "train.lock"}  # Refused, nothing moved.


def test_checkpoint_without_sums_is_unverified_and_refused_by_reading_modes(workdir):
  os.remove(os.path.join(workdir, checkpointing.SUMS_FILE))
  flip_one_bit(os.path.join(workdir, "checkpoints", "4"))  # Undetectable now: hence the refusal.
  with pytest.raises(checkpointing.CheckpointError, match=r"checkpoints/4 cannot be used: "
                     r"unverified.*allow_unverified_checkpoint=True"):
    train.restore_trained(tiny_config(), workdir, "eval")
  config = tiny_config()
  config.eval.allow_unverified_checkpoint = True
  state, *_ = train.restore_trained(config, workdir, "eval")
  assert int(state.step) == 4


def test_state_hash_sees_changes_the_float_checksum_is_blind_to(trained):
  from mf_jax import checksum
  config = tiny_config()
  state, *_ = train.restore_trained(config, trained, "eval")
  reference = checksum.state_sha256(state)
  assert checksum.state_sha256(jax.device_get(state)) == reference  # Placement does not matter.
  # Two weights of one kernel swapped: the float sum of params is unchanged (same addends).
  leaves, treedef = jax.tree_util.tree_flatten(state.params)
  i = max(range(len(leaves)), key=lambda k: leaves[k].size)
  flat = np.array(leaves[i]).reshape(-1)
  j = int(np.argmax(flat != flat[0]))
  flat[0], flat[j] = flat[j], flat[0]
  swapped = list(leaves)
  swapped[i] = flat.reshape(leaves[i].shape)
  swapped_state = state.replace(params=jax.tree_util.tree_unflatten(treedef, swapped))
  assert ts.params_checksum(swapped_state.params) == ts.params_checksum(state.params)
  assert checksum.state_sha256(swapped_state) != reference
  # One EMA weight one ulp off: params (and their checksum) untouched.
  ema = jax.tree_util.tree_map(np.array, state.ema_params)
  kernel = jax.tree_util.tree_leaves(ema)[0].reshape(-1)
  kernel[0] = np.nextafter(kernel[0], np.float32(np.inf))
  assert checksum.state_sha256(state.replace(ema_params=ema)) != reference


# --- 4. Damaged workdir files are named, with the way out -----------------------------------------

def test_garbage_sums_file_is_named_with_the_fix(workdir):
  with open(os.path.join(workdir, checkpointing.SUMS_FILE), "w") as f:
    f.write("{garbage")
  with pytest.raises(checkpointing.CheckpointError,
                     match=r"checkpoint_sha256\.json is not valid JSON.*Fix: move it away"):
    train.setup_state(tiny_config(), workdir)


def test_empty_state_signature_exits_3_naming_the_file(workdir):
  open(os.path.join(workdir, "state_signature.json"), "w").close()
  proc = main_py(workdir, "--mode=sample")
  assert proc.returncode == 3, proc.stderr[-2000:]
  assert "state_signature.json is empty" in proc.stderr and "Fix: move it away" in proc.stderr
  assert "Traceback" not in proc.stderr


# --- 5. The smaller ones --------------------------------------------------------------------------

def test_fewer_steps_than_the_workdir_holds_stops_and_writes_nothing(workdir):
  from mf_jax import config_checks, workdir_lock
  without_lock = lambda: {k: v for k, v in snapshot(workdir).items() if k != workdir_lock.FILE}
  before = without_lock()
  with pytest.raises(config_checks.ConfigError, match=r"train\.num_steps=2:.*already holds step 4"):
    train.train_and_evaluate(tiny_config(num_steps=2), workdir)
  assert without_lock() == before  # No new run_info, metrics or checkpoint (the lock names us).


def test_unfinished_saves_are_removed_and_resume_changes_are_logged_once(workdir, caplog):
  tmp = os.path.join(workdir, "checkpoints", "6.orbax-checkpoint-tmp-1234")
  os.makedirs(os.path.join(tmp, "default"))
  config = tiny_config(num_steps=5)
  config.seed = 1
  with caplog.at_level("INFO"):
    train.train_and_evaluate(config, workdir)
  assert not os.path.exists(tmp)
  notes = [r.getMessage() for r in caplog.records if "seed: 0 -> 1" in r.getMessage()]
  assert len(notes) == 1
  assert any("state sha256 " in r.getMessage() for r in caplog.records)


def test_metrics_of_a_step_are_appended_once(tmp_path):
  from mf_jax import writers
  path = str(tmp_path / "metrics.jsonl")
  writers.JsonlWriter(path).write_scalars(4, {"fd_1nfe": 1.5})
  again = writers.JsonlWriter(path)  # A second --mode=eval on the same checkpoint.
  again.write_scalars(4, {"fd_1nfe": 1.5})
  again.write_scalars(4, {"loss": 0.5})  # Other metrics of the same step are new.
  again.write_scalars(6, {"fd_1nfe": 1.2})
  rows = [json.loads(l) for l in open(path)]
  assert rows == [{"step": 4, "fd_1nfe": 1.5}, {"step": 4, "loss": 0.5},
                  {"step": 6, "fd_1nfe": 1.2}]


def test_read_only_workdir_is_refused_before_any_work(workdir, monkeypatch):
  # Tests run as root, for whom chmod does not stop writes: the access check itself is replaced.
  monkeypatch.setattr(os, "access", lambda path, mode: path != workdir)
  with pytest.raises(PermissionError, match=r"not writable, and --mode=sample writes"):
    checkpointing.check_writable(workdir, "sample")
  checkpointing.check_writable(workdir, "train")  # Training probes by writing (config_checks).


def test_nonfinite_message_does_not_claim_a_checkpoint():
  from mf_jax import train_step as step_lib
  state = types.SimpleNamespace(nonfinite_step=np.int32(3))  # All the message reads of a state.
  error = step_lib.nonfinite_error(state, {step_lib.NONFINITE_LOSS: np.nan,
                                           step_lib.NONFINITE_GRAD: 1.0})
  assert "step 3" in str(error) and "last good checkpoint is left intact" not in str(error)


def test_user_errors_are_one_line_with_exit_2(tmp_path):
  bad = tmp_path / "bad_config.py"
  bad.write_text("def get_config(:\n  pass\n")
  runs = {
      "main.py": [sys.executable, "main.py", f"--config={bad}", f"--workdir={tmp_path / 'w'}"],
      "studies.run": [sys.executable, "-m", "studies.run", f"--study={tmp_path / 'nope.py'}",
                      f"--workdir={tmp_path / 's'}"],
      "eval.fid": [sys.executable, "-m", "eval.fid", f"--samples={tmp_path / 'nope.npz'}",
                   f"--ref={tmp_path / 'nope_ref.npz'}"],
      "prepare_imagenet": [sys.executable, "-m", "input_pipeline.prepare_imagenet",
                           f"--out={tmp_path / 'absent'}", "--verify"],
  }
  for tool, cmd in runs.items():
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, (tool, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith(f"{tool}: error: ") and "Traceback" not in proc.stderr, proc.stderr
  assert str(tmp_path / "absent" / "manifest.json") in lines[-1]  # Not the parent's manifest.
  assert subprocess.run([sys.executable, "main.py", "--help"], cwd=ROOT, capture_output=True,
                        timeout=300).returncode == 0
