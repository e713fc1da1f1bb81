"""One-call GPU check: versions, ceilings, correctness, train-step speed against the official step,
attention kernels, sampling and FID throughput, and a short real training, in under 8 minutes.

  python -m benchmarks.gpu_check --out=DIR [--official=/path/to/meanflow] [--budget_s=450]
  python -m benchmarks.gpu_check --out=DIR --dry_run     # every stage on CPU, tiny sizes

Stages run in order, each with a time budget; a stage whose budget no longer fits before the
deadline is skipped with a note, and a stage that fails records its error and the next one runs.
Out-of-memory retries a measurement at half the batch. Results: DIR/gpu_check.json (everything)
and DIR/gpu_check.md (the tables, MFU against the measured matmul peak and the datasheet).

Train steps run on DiT-B/2 at batch 256 (ImageNet latents 32x32x4, random arrays) in three
precisions: bf16 (model.compute_dtype=bfloat16, cuDNN attention outside the jvp), fp32 (float32;
TF32 matmuls on Hopper by XLA's default) and fp32_bf16mm (float32 storage, bf16 matmul operands:
model.matmul_precision=bfloat16). The official MeanFlow step (a local copy of its code, as the
golden scripts use; --official) runs in float32 and with BF16_BF16_F32 matmuls.
Nothing here needs the network (scripts/make_gpu_bundle.sh prepares an offline bundle).
"""
import json
import os
import platform
import subprocess
import sys
import time
import traceback

from absl import app, flags
import jax
import numpy as np

from benchmarks import gpu_stages



class Deadline:
  """Seconds left of the whole check; `fits(s)` says whether a stage of s seconds still fits."""

  def __init__(self, budget_s: float):
    self.end = time.monotonic() + budget_s

  def left(self) -> float:
    return self.end - time.monotonic()

  def fits(self, seconds: float) -> bool:
    return self.left() >= seconds


def is_oom(error: BaseException) -> bool:
  text = str(error).lower()
  return "resource_exhausted" in text or "out of memory" in text


def with_oom_retry(fn, batch: int, min_batch: int = 1):
  """fn(batch); on out-of-memory fn(batch // 2), and so on. Returns (result, batch used, notes)."""
  notes = []
  while True:
    try:
      return fn(batch), batch, notes
    except Exception as e:  # pylint: disable=broad-except
      if not is_oom(e) or batch // 2 < min_batch:
        raise
      notes.append(f"out of memory at batch {batch}; retried at {batch // 2}")
      batch //= 2


def environment() -> dict:
  import flax, optax  # pylint: disable=import-outside-toplevel,multiple-imports
  versions = {"python": platform.python_version(), "jax": jax.__version__,
              "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else "",
              "flax": flax.__version__, "optax": optax.__version__, "numpy": np.__version__}
  try:
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
    versions["orbax"] = getattr(ocp, "__version__", "")
  except ImportError:
    versions["orbax"] = "absent"
  try:
    import tensorflow  # pylint: disable=import-outside-toplevel,unused-import
    versions["tensorflow"] = tensorflow.__version__
  except ImportError:
    versions["tensorflow"] = "absent"
  devices = jax.devices()
  out = {"versions": versions, "backend": jax.default_backend(),
         "devices": [str(d) for d in devices], "device_kind": devices[0].device_kind,
         "num_devices": len(devices)}
  stats = devices[0].memory_stats() or {}
  if "bytes_limit" in stats:
    out["memory_limit_gb"] = stats["bytes_limit"] / 1e9
  if jax.default_backend() == "gpu":
    try:
      smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                            "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
      out["nvidia_smi"] = smi.stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
      out["nvidia_smi"] = f"unavailable: {e}"
  return out


def run_stage(name, fn, deadline: Deadline, budget: float, results: dict):
  """Runs one stage unless its budget no longer fits; records result, time or error."""
  if not deadline.fits(budget):
    results[name] = {"skipped": f"{deadline.left():.0f} s left, stage budget {budget:.0f} s"}
    print(f"[gpu_check] {name}: skipped ({results[name]['skipped']})", flush=True)
    return
  print(f"[gpu_check] {name} (budget {budget:.0f} s, {deadline.left():.0f} s left)", flush=True)
  t0 = time.monotonic()
  try:
    results[name] = fn()
  except Exception as e:  # pylint: disable=broad-except
    results[name] = {"error": f"{type(e).__name__}: {str(e)[:2000]}",
                     "traceback": traceback.format_exc()[-4000:]}
    print(f"[gpu_check] {name}: FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
  results[name]["stage_s"] = time.monotonic() - t0


def main(argv):
  del argv
  if not FLAGS.out:
    sys.stderr.write("gpu_check: error: --out: missing. Fix: pass --out=DIR (created if absent).\n")
    sys.exit(2)
  stages = [s for s in FLAGS.stages.split(",") if s]
  unknown = sorted(set(stages) - set(gpu_stages.ORDER))
  if unknown:
    sys.stderr.write(f"gpu_check: error: --stages: {unknown} unknown. Fix: choose from "
                     f"{list(gpu_stages.ORDER)}.\n")
    sys.exit(2)
  os.makedirs(FLAGS.out, exist_ok=True)
  deadline = Deadline(FLAGS.budget_s)
  sizes = gpu_stages.Sizes.tiny() if FLAGS.dry_run else gpu_stages.Sizes.full()
  results = {"dry_run": FLAGS.dry_run, "started": time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                                                time.gmtime()),
             "budget_s": FLAGS.budget_s}
  results["environment"] = environment()
  print(json.dumps(results["environment"], indent=1), flush=True)
  context = gpu_stages.Context(sizes=sizes, out=FLAGS.out, official=FLAGS.official,
                               deadline=deadline, with_oom_retry=with_oom_retry, results=results)
  for name in gpu_stages.ORDER:
    if name in stages:
      budget = gpu_stages.BUDGETS_S[name] * (sizes.budget_scale)
      run_stage(name, lambda n=name: gpu_stages.STAGES[n](context), deadline, budget, results)
      write(results, FLAGS.out)  # After every stage: a check cut short still leaves its results.
  results["total_s"] = FLAGS.budget_s - deadline.left()
  write(results, FLAGS.out)
  print(open(os.path.join(FLAGS.out, "gpu_check.md")).read())


def write(results: dict, out: str):
  from benchmarks import gpu_report  # pylint: disable=import-outside-toplevel
  with open(os.path.join(out, "gpu_check.json"), "w") as f:
    json.dump(results, f, indent=1, default=str)
  with open(os.path.join(out, "gpu_check.md"), "w") as f:
    f.write(gpu_report.markdown(results))


def define_flags():
  """Flags, defined only when run as a program (importing this module defines none)."""
  flags.DEFINE_string("out", None, "Output folder for gpu_check.json and gpu_check.md.")
  flags.DEFINE_bool("dry_run", False, "Every stage on CPU with tiny sizes (seconds per stage).")
  flags.DEFINE_float("budget_s", 450.0, "Whole-check deadline in seconds (stages skip past it).")
  flags.DEFINE_string("official", "", "Folder with the official MeanFlow code (meanflow.py, "
                      "models/); empty: the official stage is skipped.")
  flags.DEFINE_string("stages", ",".join(gpu_stages.ORDER), "Comma-separated stages to run.")


FLAGS = flags.FLAGS

if __name__ == "__main__":
  # Grow GPU memory on demand instead of taking 75% up front: the correctness and trainer stages
  # start child processes on the same GPU. (Read when the backend starts, after this line.)
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  define_flags()
  app.run(main)
