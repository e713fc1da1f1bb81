"""benchmarks/gpu_check.py: --dry_run runs every stage on CPU (so the GPU check cannot rot between
GPU runs), stages skip past the deadline, out-of-memory retries at half batch, MFU arithmetic."""
import json
import os
import subprocess
import sys

import pytest

from benchmarks import gpu_check, gpu_report, gpu_stages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_dry_run_runs_every_stage_and_writes_json_and_markdown(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", f"--out={tmp_path}",
                         "--dry_run"], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.load(open(tmp_path / "gpu_check.json"))
  for stage in gpu_stages.ORDER:
    assert "error" not in results[stage], (stage, results[stage].get("error"))
  assert results["official"]["skipped"].startswith("no --official")  # No official code here.
  assert results["ceilings"]["matmul_bf16_tflops"] > 0
  assert results["correctness"]["attention_xla_ok"] is True
  row = results["train_step"]["bf16/meanflow_guided"]
  assert row["images_per_s"] > 0 and row["compile_s"] > 0 and row["total_bytes"] > 0
  assert 0.5 < row["first_step_loss"] < 2.0  # Adaptive loss of an untrained net: ~1.
  for kernel in ("einsum", "xla"):
    assert all(isinstance(results["attention"][kernel][m], float)
               for m in ("forward", "backward", "jvp", "grad_of_jvp")), results["attention"]
  assert results["sampling"]["sample_1nfe_images_per_s"] > 0
  assert results["trainer"]["returncode"] == 0 and results["trainer"]["checkpoints"] == ["2"]
  table = open(tmp_path / "gpu_check.md").read()
  assert "| bf16 | meanflow_guided | 8 |" in table and "DRY RUN" in table


def test_stage_past_the_deadline_is_skipped_with_a_note():
  results = {}
  gpu_check.run_stage("x", lambda: pytest.fail("must not run"), gpu_check.Deadline(5.0), 60.0,
                      results)
  assert "skipped" in results["x"]
  gpu_check.run_stage("y", lambda: {"ran": True}, gpu_check.Deadline(100.0), 60.0, results)
  assert results["y"]["ran"]


def test_out_of_memory_retries_at_half_batch_and_other_errors_propagate():
  seen = []
  def fn(batch):
    seen.append(batch)
    if batch > 64:
      raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")
    return batch * 2
  assert gpu_check.with_oom_retry(fn, 256)[:2] == (128, 64)
  assert seen == [256, 128, 64]
  with pytest.raises(ValueError):
    gpu_check.with_oom_retry(lambda b: (_ for _ in ()).throw(ValueError("shape")), 256)


def test_mfu_uses_the_peak_of_the_precision():
  """bf16 and fp32_bf16mm rows against the bf16 peak, fp32 rows against TF32 (H100 SXM)."""
  sheet = gpu_report.datasheet("NVIDIA H100 80GB HBM3")
  ceilings = {"matmul_bf16_tflops": 800.0, "matmul_fp32_default_tflops": 400.0}
  row = {"achieved_tflops": 400.0}
  assert gpu_report.mfu(row, "bf16", ceilings, sheet) == (0.5, 400.0 / 989.0)
  assert gpu_report.mfu(row, "fp32_bf16mm", ceilings, sheet) == (0.5, 400.0 / 989.0)
  assert gpu_report.mfu(row, "fp32", ceilings, sheet) == (1.0, 400.0 / 494.7)
  assert gpu_report.datasheet("NVIDIA H100 PCIe")["bf16"] == 756.0
  assert gpu_report.datasheet("cpu") is None


def test_scale_platform_gpu_without_the_cuda_plugin_names_the_fix(monkeypatch):
  from benchmarks import scale  # pylint: disable=import-outside-toplevel
  monkeypatch.setitem(sys.modules, "jax_plugins.xla_cuda12", None)  # import -> ImportError
  with pytest.raises(ValueError, match=r"--platform=gpu needs the CUDA PJRT plugin: pip install "
                                       r"--no-deps --target=/tmp/gpuvenv 'jax-cuda12-pjrt=="):
    scale.target_devices("gpu", 8)
