"""The trainer as users run it: a subprocess stopped by SIGTERM, and two JAX processes on localhost."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np

from configs import tiny
from mf_jax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.py")


def launch(workdir, *flags, devices=8, log=None):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu")
  cmd = [sys.executable, os.path.join(ROOT, "main.py"), f"--config={TINY}", f"--workdir={workdir}",
         *flags]
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log or subprocess.DEVNULL,
                          stderr=subprocess.STDOUT if log else subprocess.DEVNULL)


def logged_steps(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  return [json.loads(l)["step"] for l in open(path) if '"loss"' in l]


def test_sigterm_saves_a_checkpoint_that_the_next_run_resumes(tmp_path):
  workdir = str(tmp_path)
  proc = launch(workdir, "--config.train.num_steps=100000", "--config.train.log_every=1",
                "--config.train.checkpoint_every=100000")
  deadline = time.time() + 240
  while len(logged_steps(workdir)) < 3:
    assert proc.poll() is None, "training exited early"
    assert time.time() < deadline, "training did not start in time"
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=120) == 0
  saved = [int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()]
  assert saved and max(saved) >= 3
  config = tiny.get_config()
  config.train.num_steps = max(saved) + 1
  state = train.train_and_evaluate(config, workdir)
  assert int(state.step) == max(saved) + 1
  assert os.path.exists(tmp_path / "run_info" / f"start_{max(saved):09d}.json")


def test_two_processes_on_localhost_agree(tmp_path):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  workdir = str(tmp_path / "multi")
  logs = [open(tmp_path / f"p{i}.log", "w+") for i in range(2)]
  procs = [launch(workdir, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                  f"--process_id={i}", devices=2, log=logs[i]) for i in range(2)]
  codes = [p.wait(timeout=400) for p in procs]
  texts = []
  for f in logs:
    f.seek(0)
    texts.append(f.read())
  assert codes == [0, 0], texts[0][-3000:] + texts[1][-3000:]
  sums = [float(re.search(r"parameter checksum (\S+)", t).group(1)) for t in texts]
  assert "4 global devices" in texts[0] or "4 global" in texts[0]
  assert sums[0] == sums[1]  # Both processes hold the same replicated parameters.
  hashes = [re.search(r"state sha256 ([0-9a-f]{64})", t).group(1) for t in texts]
  assert hashes[0] == hashes[1]  # The byte-level hash gathers the whole state on every process.
  # And the 2 x 2-device run matches one process with 8 devices on the same global batches.
  single = train.train_and_evaluate(tiny.get_config(), str(tmp_path / "single"))
  np.testing.assert_allclose(sums[0], train.ts.params_checksum(single.params), rtol=1e-5)
