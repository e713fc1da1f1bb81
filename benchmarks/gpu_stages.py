"""The stages of benchmarks/gpu_check.py: each takes the check's Context and returns a JSON dict.

Sizes.full() is the H100 check (DiT-B/2, batch 256); Sizes.tiny() runs the same code on CPU in
seconds per stage (--dry_run), so a stage cannot rot between GPU runs.
"""
import dataclasses
import gc
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Tuple

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORDER = ("ceilings", "correctness", "train_step", "official", "attention", "sampling", "trainer")
# Seconds per stage on one H100 (sum 450 s, under the 8-minute target with start-up).
BUDGETS_S = {"ceilings": 20, "correctness": 50, "train_step": 170, "official": 60, "attention": 30,
             "sampling": 40, "trainer": 80}
# The three precisions of the train-step table: name -> (model.compute_dtype, model.matmul_precision).
PRECISIONS = {"bf16": ("bfloat16", "default"), "fp32": ("float32", "default"),
              "fp32_bf16mm": ("float32", "bfloat16")}


@dataclasses.dataclass
class Sizes:
  """Problem sizes of one check run."""
  depth: Any  # None: the variant's.
  hidden_size: Any
  num_heads: Any
  image_size: int
  batch: int
  precisions: Tuple[str, ...]
  variants: Tuple[str, ...]
  repeats: int
  steps: int
  warmup: int
  matmul_n: int
  copy_mb: int
  attention_shape: Tuple[int, int, int, int]  # [B, N, heads, head_dim]
  sample_batch: int
  fid_batch: int
  fid_image: int
  trainer_config: str
  trainer_steps: int
  official_variant: str
  budget_scale: float  # Multiplies BUDGETS_S.

  @classmethod
  def full(cls):
    return cls(depth=None, hidden_size=None, num_heads=None, image_size=32, batch=256,
               precisions=tuple(PRECISIONS), variants=("flow_matching", "meanflow",
                                                       "meanflow_guided"),
               repeats=3, steps=5, warmup=2, matmul_n=8192, copy_mb=1024,
               attention_shape=(256, 256, 12, 64), sample_batch=256, fid_batch=200, fid_image=256,
               trainer_config="configs/default.py", trainer_steps=300,
               official_variant="DiT_B_2", budget_scale=1.0)

  @classmethod
  def tiny(cls):
    return cls(depth=1, hidden_size=32, num_heads=2, image_size=8, batch=8,
               precisions=("bf16",), variants=("meanflow_guided",), repeats=1,
               steps=1, warmup=0, matmul_n=64, copy_mb=1, attention_shape=(2, 16, 2, 8),
               sample_batch=4, fid_batch=2, fid_image=32, trainer_config="configs/tiny.py",
               trainer_steps=2, official_variant="DiT_tiny", budget_scale=0.0)


@dataclasses.dataclass
class Context:
  sizes: Sizes
  out: str
  official: str
  deadline: Any
  with_oom_retry: Callable
  results: dict

  @property
  def gpu(self) -> bool:
    return jax.default_backend() == "gpu"


def median_time(fn, *args, reps: int = 5, inner: int = 1) -> float:
  """Median seconds per call of a compiled fn (after one untimed call)."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    for _ in range(inner):
      out = fn(*args)
    jax.block_until_ready(out)
    times.append((time.perf_counter() - t0) / inner)
  return statistics.median(times)


def imagenet_config(sizes: Sizes, precision: str, batch: int):
  """configs/imagenet_b2.py at `sizes`, in one of PRECISIONS; cuDNN attention for bf16 on GPU."""
  from configs import imagenet_b2  # pylint: disable=import-outside-toplevel
  config = imagenet_b2.get_config()
  dtype, matmul = PRECISIONS[precision]
  config.data.image_size = sizes.image_size
  config.model.update(depth=sizes.depth, hidden_size=sizes.hidden_size, num_heads=sizes.num_heads,
                      compute_dtype=dtype, matmul_precision=matmul,
                      attention_impl="cudnn" if dtype == "bfloat16" and jax.default_backend() == "gpu"
                      else "xla")
  config.train.global_batch_size = batch
  return config


# ---------------------------------------------------------------------------------------------

def ceilings(ctx: Context) -> dict:
  """Dense matmul TFLOP/s (bf16; float32 at XLA's default and at HIGHEST) and copy GB/s."""
  n = ctx.sizes.matmul_n
  out = {}
  for name, dtype, precision in (("bf16", jnp.bfloat16, None), ("fp32_default", jnp.float32, None),
                                 ("fp32_highest", jnp.float32, jax.lax.Precision.HIGHEST)):
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    f = jax.jit(lambda a, b, p=precision: jnp.dot(a, b, precision=p))
    s = median_time(f, a, b, inner=5)
    out[f"matmul_{name}_tflops"] = 2 * n ** 3 / s / 1e12
  x = jnp.ones((ctx.sizes.copy_mb * 2 ** 20 // 4,), jnp.float32)
  s = median_time(jax.jit(lambda x: x + 1.0), x, inner=5)
  out["copy_gb_per_s"] = 2 * x.nbytes / s / 1e9  # One read and one write per element.
  out["matmul_n"] = n
  return out


def correctness(ctx: Context) -> dict:
  """Device-independent checks on this device: attention kernels against einsum, cuDNN kept out of
  MeanFlow's jvp in a real loss gradient, and (GPU) a subset of the test suite."""
  from mf_jax.models import attention  # pylint: disable=import-outside-toplevel
  out = {}
  b, n, h, d = 2, 64, 4, 64
  q, k, v, ct = (jax.random.normal(jax.random.key(i), (b, n, h, d), jnp.bfloat16) for i in range(4))
  ref_out, ref_vjp = jax.vjp(lambda *a: attention.einsum_attention(*a), q, k, v)
  ref = (ref_out, ref_vjp(ct))
  kernels = ["xla"] + (["cudnn"] if ctx.gpu else [])
  for name in kernels:
    got_out, got_vjp = jax.vjp(attention.KERNELS[name], q, k, v)
    errs = [rel_err(g, r) for g, r in zip(jax.tree_util.tree_leaves((got_out, got_vjp(ct))),
                                          jax.tree_util.tree_leaves(ref))]
    # bf16 inputs: each path rounds its output and cotangents to bf16 (2^-8 = 4e-3 relative).
    out[f"attention_{name}_vs_einsum_max_rel_err"] = max(errs)
    out[f"attention_{name}_ok"] = max(errs) < 3e-2
  if ctx.gpu:
    out.update(cudnn_meanflow_check())
  else:
    out["cudnn_meanflow"] = "skipped: cuDNN needs a GPU (tests/test_attention.py checks the selection)"
  if ctx.gpu and not ctx.sizes.budget_scale == 0.0:
    out["pytest"] = run_pytest(min(120.0, max(ctx.deadline.left() - 10, 10)))
  return out


def cudnn_meanflow_check() -> dict:
  """Guided MeanFlow loss and gradient of a small bf16 DiT with cuDNN attention against einsum."""
  from configs.base import meanflow_config  # pylint: disable=import-outside-toplevel
  from mf_jax import meanflow  # pylint: disable=import-outside-toplevel
  from mf_jax.models import attention, dit  # pylint: disable=import-outside-toplevel
  cfg = meanflow_config()
  cfg.update(num_classes=10, r_neq_t_ratio=0.5, guidance_omega=2.0, guidance_kappa=0.5)
  x = jax.random.normal(jax.random.key(0), (8, 16, 16, 4))
  labels = jnp.arange(8) % 10
  def loss_and_grad(impl):
    model = dit.DiT(variant="S/2", depth=2, hidden_size=128, num_heads=2, image_size=16,
                    channels=4, num_classes=10, attention_impl=impl, dtype=jnp.bfloat16)
    params = model.init(jax.random.key(1), x, (labels * 0.0, labels * 0.0), labels)
    params = jax.tree_util.tree_map(lambda p: p + 0.02, params)
    def loss(p):
      u_fn = lambda z, r, t, y: model.apply(p, z, (t, t - r), y)
      return meanflow.meanflow_loss(u_fn, x, labels, jax.random.key(2), cfg)[0]
    return jax.jit(jax.value_and_grad(loss))(params)
  with attention.recording() as chosen:
    got = loss_and_grad("cudnn")
  want = loss_and_grad("einsum")
  err = rel_err(got[1], want[1])
  return {"cudnn_meanflow_kernels": sorted(set(chosen)),
          "cudnn_meanflow_loss": float(got[0]), "einsum_meanflow_loss": float(want[0]),
          "cudnn_meanflow_grad_rel_err": err, "cudnn_meanflow_ok": bool(err < 5e-2)}


def run_pytest(timeout_s: float) -> dict:
  """A device-independent part of the suite on this device, at full float32 matmul precision."""
  try:
    import pytest  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    return {"skipped": "pytest is not installed (the offline bundle has its wheel)"}
  env = dict(os.environ, JAX_PLATFORMS=jax.default_backend(),
             JAX_DEFAULT_MATMUL_PRECISION="highest")
  files = ["tests/test_attention.py", "tests/test_meanflow_fast_path.py"]
  try:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                           *files], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout_s)
  except subprocess.TimeoutExpired:
    return {"files": files, "error": f"timed out after {timeout_s:.0f} s"}
  return {"files": files, "returncode": proc.returncode, "tail": proc.stdout[-1500:]}


def rel_err(got, want) -> float:
  g = np.concatenate([np.ravel(np.asarray(a, np.float64)) for a in jax.tree_util.tree_leaves(got)])
  w = np.concatenate([np.ravel(np.asarray(a, np.float64)) for a in jax.tree_util.tree_leaves(want)])
  return float(np.linalg.norm(g - w) / max(np.linalg.norm(w), 1e-300))


def train_step(ctx: Context) -> dict:
  """The trainer's step on DiT-B/2 (ImageNet latents shapes) per precision and variant."""
  from benchmarks import train_step as bench  # pylint: disable=import-outside-toplevel
  s = ctx.sizes
  out = {}
  per = BUDGETS_S["train_step"] * s.budget_scale / max(len(s.precisions) * len(s.variants), 1)
  for precision in s.precisions:
    for variant in s.variants:
      key = f"{precision}/{variant}"
      if not ctx.deadline.fits(per * 0.5):
        out[key] = {"skipped": f"{ctx.deadline.left():.0f} s left"}
        continue
      def measure(batch):
        config = imagenet_config(s, precision, batch)
        return bench.run(config, (variant,), s.repeats, s.steps, s.warmup)
      try:
        result, batch, notes = ctx.with_oom_retry(measure, s.batch)
        out[key] = dict(result[variant], batch=batch, notes=notes,
                        attention_impl=result["config"]["attention_impl"])
      except Exception as e:  # pylint: disable=broad-except
        out[key] = {"error": f"{type(e).__name__}: {str(e)[:1500]}"}
      gc.collect()
      print(f"[gpu_check]   {key}: {summary_line(out[key])}", flush=True)
  return out


def summary_line(row: dict) -> str:
  if "images_per_s" in row:
    return (f"{row['images_per_s']:.1f} img/s, compile {row['compile_s']:.1f} s, "
            f"loss0 {row.get('first_step_loss', float('nan')):.5f}")
  return str(row)[:200]


def official(ctx: Context) -> dict:
  """The official MeanFlow step (local copy of its code), float32 and with bf16 matmul operands."""
  if not ctx.official:
    return {"skipped": "no --official folder (scripts/make_gpu_bundle.sh puts one in the bundle)"}
  from benchmarks import official_step_flops as off  # pylint: disable=import-outside-toplevel
  module = off.load_official(ctx.official)
  s = ctx.sizes
  if s.official_variant not in vars(module.models_dit):  # The dry run's tiny model.
    import functools  # pylint: disable=import-outside-toplevel
    setattr(module.models_dit, s.official_variant, functools.partial(
        module.models_dit.DiT, input_size=s.image_size, patch_size=2, hidden_size=32, depth=1,
        num_heads=2))
  out = {"commit": off.OFFICIAL_COMMIT, "variant": s.official_variant}
  for matmul in ("", "BF16_BF16_F32"):
    for guided in (False, True):
      key = f"{'fp32_bf16mm' if matmul else 'fp32'}/{'meanflow_guided' if guided else 'meanflow'}"
      if not ctx.deadline.fits(10 * s.budget_scale):
        out[key] = {"skipped": f"{ctx.deadline.left():.0f} s left"}
        continue
      measure = lambda b, g=guided, m=matmul: off.time_step(
          module, g, b, s.official_variant, steps=s.steps, repeats=s.repeats, warmup=s.warmup,
          matmul_precision=m, image_size=s.image_size)
      try:
        result, batch, notes = ctx.with_oom_retry(measure, s.batch)
        out[key] = dict(result, batch=batch, notes=notes)
      except Exception as e:  # pylint: disable=broad-except
        out[key] = {"error": f"{type(e).__name__}: {str(e)[:1500]}"}
      gc.collect()
      print(f"[gpu_check]   official {key}: {summary_line(out[key])}", flush=True)
  return out


def attention_kernels(ctx: Context) -> dict:
  """Each kernel in bf16 at DiT-B/2's attention shape: forward, backward, jvp, grad of jvp (ms)."""
  from mf_jax.models import attention  # pylint: disable=import-outside-toplevel
  shape = ctx.sizes.attention_shape
  q, k, v, ct = (jax.random.normal(jax.random.key(i), shape, jnp.bfloat16) for i in range(4))
  modes = {
      "forward": lambda f: jax.jit(f),
      "backward": lambda f: jax.jit(jax.grad(lambda *a: jnp.sum(f(*a) * ct).astype(jnp.float32),
                                             argnums=(0, 1, 2))),
      "jvp": lambda f: jax.jit(lambda *a: jax.jvp(f, a, (ct, ct, ct))),
      "grad_of_jvp": lambda f: jax.jit(jax.grad(
          lambda *a: jnp.sum(jax.jvp(f, a, (ct, ct, ct))[1] * ct).astype(jnp.float32),
          argnums=(0, 1, 2))),
  }
  out = {"shape": list(shape)}
  for name in ("einsum", "xla", "cudnn"):
    row = {}
    for mode, make in modes.items():
      if name == "cudnn" and not ctx.gpu:
        row[mode] = "n/a: cuDNN needs a GPU"
      elif name == "cudnn" and mode in ("jvp", "grad_of_jvp"):
        row[mode] = "n/a: custom_vjp has no jvp (attention_impl=cudnn uses xla here)"
      else:
        try:
          row[mode] = 1e3 * median_time(make(attention.KERNELS[name]), q, k, v)
        except Exception as e:  # pylint: disable=broad-except
          row[mode] = f"error: {type(e).__name__}: {str(e)[:300]}"
    out[name] = row
  return out


def sampling(ctx: Context) -> dict:
  """1-NFE sampling of DiT-B/2 in bf16, and the FID Inception's images/s (random weights)."""
  from eval import inception  # pylint: disable=import-outside-toplevel
  from mf_jax import generate, sharding as sharding_lib  # pylint: disable=import-outside-toplevel
  from mf_jax import train_state as ts  # pylint: disable=import-outside-toplevel
  s = ctx.sizes
  config = imagenet_config(s, "bf16", s.sample_batch)
  mesh = sharding_lib.make_mesh(1, jax.devices()[:1])
  model = ts.build_model(config)
  x, conditions, labels = ts.example_inputs(config, s.sample_batch)
  params = jax.jit(model.init)(jax.random.key(0), x, conditions, labels)
  sample_fn = generate.make_sampler(config, model, mesh)
  noise = jax.random.normal(jax.random.key(1), x.shape)
  labels = jnp.arange(s.sample_batch, dtype=jnp.int32) % 1000
  t0 = time.perf_counter()
  jax.block_until_ready(sample_fn(params, noise, labels, 1))
  compile_s = time.perf_counter() - t0
  step_s = median_time(lambda p, z, y: sample_fn(p, z, y, 1), params, noise, labels, reps=3)
  out = {"sample_batch": s.sample_batch, "sample_1nfe_images_per_s": s.sample_batch / step_s,
         "sample_compile_s": compile_s, "attention_impl": config.model.attention_impl}
  apply_fn = inception.make_apply_fn()
  iparams = jax.device_put(inception.random_inception_params(jax.random.key(2)))
  images = jnp.asarray(np.random.default_rng(0).integers(
      0, 256, (s.fid_batch, s.fid_image, s.fid_image, 3)), jnp.uint8)
  step_s = median_time(apply_fn, iparams, images, reps=3)
  out.update(fid_batch=s.fid_batch, fid_image=s.fid_image, fid_inception_images_per_s=s.fid_batch / step_s)
  return out


def trainer(ctx: Context) -> dict:
  """A short real training through main.py, with a checkpoint, in a subprocess."""
  s = ctx.sizes
  workdir = os.path.join(os.path.abspath(ctx.out), "trainer_run")
  if os.path.exists(workdir):
    import shutil  # pylint: disable=import-outside-toplevel
    shutil.rmtree(workdir)
  n = s.trainer_steps
  cmd = [sys.executable, "main.py", f"--config={s.trainer_config}", f"--workdir={workdir}",
         f"--config.train.num_steps={n}", f"--config.train.checkpoint_every={n}",
         f"--config.train.log_every={max(n // 4, 1)}", "--config.eval.every_steps=0",
         f"--config.train.sample_every={n if s.budget_scale else 0}"]  # Dry run: no grid compile.
  # The dry run's budgets do not bind (a loaded CPU compiles slowly); a GPU run stops at its deadline.
  timeout = max(ctx.deadline.left() - 5, 30) if s.budget_scale else 900
  t0 = time.perf_counter()
  try:
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return {"error": f"timed out after {timeout:.0f} s", "command": " ".join(cmd)}
  out = {"command": " ".join(cmd), "returncode": proc.returncode,
         "wall_s": time.perf_counter() - t0}
  metrics = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(metrics):
    import json  # pylint: disable=import-outside-toplevel
    rows = [json.loads(line) for line in open(metrics)]
    losses = [r for r in rows if "loss" in r]
    out["last_loss"] = losses[-1]["loss"] if losses else None
    rates = [r["steps_per_sec"] for r in rows if "steps_per_sec" in r]
    out["steps_per_sec"] = rates[-1] if rates else None
  out["checkpoints"] = sorted(os.listdir(os.path.join(workdir, "checkpoints"))) if os.path.isdir(
      os.path.join(workdir, "checkpoints")) else []
  if proc.returncode:
    out["error"] = proc.stderr[-2000:]
  return out


STAGES = {"ceilings": ceilings, "correctness": correctness, "train_step": train_step,
          "official": official, "attention": attention_kernels, "sampling": sampling,
          "trainer": trainer}
