"""Helpers of the workdir tests (test_workdir_safety.py, test_reliability.py): a tiny run trained
once per test module, fresh copies of it, a snapshot that says whether a folder was touched, and
a one-bit corruption of a checkpoint."""
import hashlib
import os
import shutil

import pytest

from configs import tiny
from mf_jax import train


def tiny_config(**train_overrides):
  config = tiny.get_config()
  config.train.update(num_steps=4, checkpoint_every=2, keep_checkpoints=3)
  config.train.update(train_overrides)
  return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("trained") / "run")
  train.train_and_evaluate(tiny_config(), workdir)
  return workdir


@pytest.fixture
def workdir(trained, tmp_path):
  copy = str(tmp_path / "run")
  shutil.copytree(trained, copy)
  return copy


def snapshot(folder, skip=()):
  """{relative path: sha256} of every file, plus the folder list: equal means untouched. Files
  named in `skip` at the top of the folder are left out."""
  out = {}
  for root, dirs, files in os.walk(folder):
    out[os.path.relpath(root, folder) + "/"] = sorted(dirs)
    for name in files:
      if name in skip and root == folder:
        continue
      with open(os.path.join(root, name), "rb") as f:
        out[os.path.relpath(os.path.join(root, name), folder)] = hashlib.sha256(f.read()).hexdigest()
  return out


def flip_one_bit(step_dir):
  """Flips one bit in the middle of the checkpoint's largest file (same size, still parseable)."""
  files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs]
  largest = max(files, key=os.path.getsize)
  with open(largest, "r+b") as f:
    f.seek(os.path.getsize(largest) // 2)
    byte = f.read(1)[0]
    f.seek(-1, 1)
    f.write(bytes([byte ^ 0x10]))
  return largest
