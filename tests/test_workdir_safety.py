"""A workdir keeps its run: a mismatched config changes nothing, bad checkpoints are found and set aside.

One tiny training run (checkpoints at steps 2 and 4) is shared by the tests; each works on a copy.
"""
import json
import os
import subprocess
import sys

import pytest

from mf_jax import checkpointing, config_checks, train, workdir_lock, workdir_signature
import workdirs
from workdirs import flip_one_bit, tiny_config, trained, workdir  # noqa: F401  (fixtures)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def snapshot(folder):
  """workdirs.snapshot without the workdir lock's record: a refused training start still held the
  lock, naming itself."""
  return workdirs.snapshot(folder, skip=(workdir_lock.FILE,))


def test_first_start_records_signature_and_checkpoint_sums(trained):
  with open(os.path.join(trained, workdir_signature.FILE)) as f:
    signature = json.load(f)
  assert signature["fields"]["model.hidden_size"] == 32
  assert signature["shapes"] == workdir_signature.compute(tiny_config())["shapes"]
  ckpt = checkpointing.Checkpointer(trained, keep=3)
  with open(os.path.join(trained, checkpointing.SUMS_FILE)) as f:
    assert sorted(json.load(f)) == ["2", "4"]
  assert ckpt.verify(2) is None and ckpt.verify(4) is None
  ckpt.close()


def test_resume_with_other_width_changes_nothing_then_right_config_continues(workdir):
  before = snapshot(workdir)
  wide = tiny_config(num_steps=6)
  wide.model.hidden_size = 64
  for run in (train.train_and_evaluate, train.sample_to_files, train.evaluate_checkpoint):
    with pytest.raises(config_checks.ConfigError,
                       match=r"model\.hidden_size: workdir 32, this config 64.*workdir's own config.*"
                             r"--config\.model\.hidden_size=32.*new --workdir"):
      run(wide, workdir)
  # The command line: non-zero exit, one message, nothing written.
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"),
                         f"--config={os.path.join(ROOT, 'configs', 'tiny.py')}", f"--workdir={workdir}",
                         "--config.model.hidden_size=64"], cwd=ROOT, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 2 and "model.hidden_size: workdir 32, this config 64" in proc.stderr
  assert "Traceback" not in proc.stderr
  assert snapshot(workdir) == before  # Checkpoints, metrics, run_info: byte-identical.

  state = train.train_and_evaluate(tiny_config(num_steps=6), workdir)
  assert int(state.step) == 6
  assert os.path.exists(os.path.join(workdir, "run_info", "start_000000004.json"))
  steps = [json.loads(line)["step"] for line in open(os.path.join(workdir, "metrics.jsonl"))
           if "loss" in line]
  assert steps == [2, 4, 6]  # Continued: no step logged twice.


def test_resume_with_other_bank_dtype_is_refused_with_the_field_named(tmp_path):
  """A drifting workdir whose banks were float32 cannot be resumed with uint8 banks (restoring
  would cast the stored pixels to bytes): the dtype is part of the signature."""
  config = tiny_config()
  config.method = "drifting"
  config.drifting.update(classes_per_step=2, num_pos=2, queue_len=4)
  workdir_signature.write(config, str(tmp_path))
  workdir_signature.check(config, str(tmp_path))  # The same config resumes.
  config.drifting.bank_dtype = "uint8"
  with pytest.raises(config_checks.ConfigError,
                     match=r"drifting\.bank_dtype: workdir 'float32', this config 'uint8'.*"
                           r"\.aux\['queues'\]\.samples: float32\[.*\] vs uint8\[.*"
                           r"--config\.drifting\.bank_dtype=float32"):
    workdir_signature.check(config, str(tmp_path))


def test_bit_flipped_newest_checkpoint_is_set_aside_and_previous_used(workdir):
  flipped = flip_one_bit(os.path.join(workdir, "checkpoints", "4"))
  # An earlier set-aside copy of step 4 must not be nested into.
  os.makedirs(os.path.join(workdir, checkpointing.ASIDE, "4"))
  ckpt = checkpointing.Checkpointer(workdir, keep=3)
  why = ckpt.verify(4)
  ckpt.close()
  assert why and os.path.relpath(flipped, os.path.join(workdir, "checkpoints", "4")) in why
  state, *_, ckpt = train.setup_state(tiny_config(), workdir)
  ckpt.close()
  assert int(state.step) == 2
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]
  assert os.path.isdir(os.path.join(workdir, checkpointing.ASIDE, "4.1", "default"))


def test_no_readable_checkpoint_stops_and_moves_nothing(workdir):
  for step in ("2", "4"):
    flip_one_bit(os.path.join(workdir, "checkpoints", step))
  before = snapshot(workdir)
  with pytest.raises(checkpointing.CheckpointError,
                     match=r"None of the 2 checkpoints.*step 4: integrity check failed.*step 2: "
                           r"integrity.*Nothing was moved"):
    train.setup_state(tiny_config(), workdir)
  assert snapshot(workdir) == before
