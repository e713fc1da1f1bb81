"""The trainer without TensorFlow: main.py trains, checkpoints and samples on the digits in a
subprocess where `import tensorflow` fails, and still writes metrics.jsonl and TensorBoard events.

A GPU host with only jax[cuda] has no TensorFlow; a shim package named `tensorflow` that raises
ImportError, first on PYTHONPATH, stands in for that host.
"""
import json
import os
import struct
import subprocess
import sys

from tensorboard.compat.proto import event_pb2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.py")

# Run inside the shimmed interpreter: every reader and the writers import, TF stays absent.
IMPORTS = """
import importlib, sys
for name in ("input_pipeline.latents", "input_pipeline.pixels", "input_pipeline.in_memory",
             "mf_jax.writers", "mf_jax.train", "mf_jax.progress"):
  importlib.import_module(name)
assert "tensorflow" not in sys.modules or sys.modules["tensorflow"] is None, "TF was loaded"
try:
  import tensorflow
except ImportError:
  print("TF_ABSENT")
"""


def _env(tmp_path):
  shim = tmp_path / "shim" / "tensorflow"
  shim.mkdir(parents=True)
  (shim / "__init__.py").write_text('raise ImportError("No module named tensorflow (test shim)")\n')
  path = os.pathsep.join([str(tmp_path / "shim"), ROOT, os.environ.get("PYTHONPATH", "")])
  return dict(os.environ, PYTHONPATH=path, JAX_PLATFORMS="cpu",
              XLA_FLAGS="--xla_force_host_platform_device_count=2")


def _run(env, *args):
  proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def _event_tags(workdir):
  """Tags in the TensorBoard event files, read record by record (length, crc, data, crc)."""
  tags = set()
  for name in os.listdir(workdir):
    if name.startswith("events.out.tfevents"):
      data = open(os.path.join(workdir, name), "rb").read()
      pos = 0
      while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
        tags.update(v.tag for v in event.summary.value)
        pos += 12 + length + 4
  return tags


def test_train_and_sample_without_tensorflow(tmp_path):
  env = _env(tmp_path)
  assert "TF_ABSENT" in _run(env, "-c", IMPORTS).stdout
  workdir = str(tmp_path / "run")
  _run(env, "main.py", f"--config={TINY}", f"--workdir={workdir}", "--config.train.sample_every=4")
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in rows if "loss" in r] == [2, 4]
  assert {"loss", "samples_1nfe"} <= _event_tags(workdir)
  assert os.listdir(os.path.join(workdir, "samples"))
  _run(env, "main.py", f"--config={TINY}", f"--workdir={workdir}", "--mode=sample")
