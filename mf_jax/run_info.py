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


# Fields a resumed run may change, but whose change a reader of the log should see.
NOTED_FIELDS = ("seed", "optim.learning_rate", "optim.schedule", "optim.warmup_steps",
                "train.global_batch_size")


def _field(config: dict, name: str):
  for part in name.split("."):
    if not isinstance(config, dict) or part not in config:
      return None
    config = config[part]
  return config


def note_changes(folder: str, config) -> list:
  """Logs (one warning) the NOTED_FIELDS whose value differs from the previous start's config;
  returns the differences as "field: old -> new"."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  previous = sorted(n for n in os.listdir(folder)
                    if n.startswith("config_") and n.endswith(".json"))
  if not previous:
    return []
  try:
    with open(os.path.join(folder, previous[-1])) as f:
      old = json.load(f)
  except (OSError, ValueError):
    return []
  new = json.loads(config.to_json_best_effort())
  changes = [f"{name}: {_field(old, name)!r} -> {_field(new, name)!r}" for name in NOTED_FIELDS
             if _field(old, name) != _field(new, name)]
  if changes:
    logging.warning("This start changes %s against the previous start (%s); the run continues "
                    "with the new values.", "; ".join(changes), previous[-1])
  return changes


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
  note_changes(folder, config)
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
