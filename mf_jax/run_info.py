"""Records what produced a run: resolved config, git revision, package versions, devices.

Written by process 0 into WORKDIR/run_info/ at every start (one file per start, so a resumed run
keeps the record of the earlier ones).
"""
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata

import jax

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorflow-cpu", "tensorflow",
            "tensorflow-datasets", "ml-collections", "clu", "numpy", "scikit-learn")


def git_revision() -> dict:
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  def git(*args):
    try:
      return subprocess.run(["git", "-C", root, *args], capture_output=True, text=True,
                            timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
      return ""
  return {"commit": git("rev-parse", "HEAD") or "unknown",
          "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def package_versions() -> dict:
  out = {}
  for name in PACKAGES:
    try:
      out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      pass
  return out


def write(workdir: str, config, start_step: int) -> str:
  if jax.process_index() != 0:
    return ""
  folder = os.path.join(workdir, "run_info")
  os.makedirs(folder, exist_ok=True)
  info = {
      "start_step": start_step,
      "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
      "git": git_revision(),
      "packages": package_versions(),
      "python": sys.version.split()[0],
      "platform": platform.platform(),
      "devices": [str(d) for d in jax.devices()],
      "process_count": jax.process_count(),
      "argv": sys.argv,
  }
  # A second start at the same step (a run stopped before its first checkpoint) keeps the first's.
  tag, n = f"{start_step:09d}", 1
  while os.path.exists(os.path.join(folder, f"start_{tag}.json")):
    tag, n = f"{start_step:09d}_{n}", n + 1
  path = os.path.join(folder, f"start_{tag}.json")
  with open(path, "w") as f:
    json.dump(info, f, indent=2)
  with open(os.path.join(folder, f"config_{tag}.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  return path
