"""Times the compiled train step of flow matching, MeanFlow, and MeanFlow with guidance, side by side.

  python -m benchmarks.train_step --config=configs/default.py [--config.model.compute_dtype=bfloat16]
      [--variants=meanflow,meanflow_guided] [--peak_tflops=989]

(a) flow matching: r != t fraction 0, no guidance calls; (b) MeanFlow without guidance; (c) MeanFlow
with guidance in the target (omega = 2, kappa = 0.5 unless the config already guides). --variants
picks which run. Repetitions are interleaved after warm-up, medians are compared as ratios, and one
JSON object is printed per run with images/s, compile time, the first step's loss (the same
parameters and batch for every precision: a free cross-check between precisions), memory from the
compiled step's own memory_analysis (arguments, outputs, temporaries: per device, known before the
step runs), XLA's FLOPs per image, the achieved FLOP/s and, given --peak_tflops, the MFU. CPU time
per step is also reported, since wall time on a shared machine includes other processes' load.
Data: the config's own reader for the in-memory sets, random arrays of the reader's shapes otherwise
(timing does not depend on the values).
"""
import json
import resource
import statistics
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

import input_pipeline
from mf_jax import sharding as sharding_lib
from mf_jax import train_state as ts
from mf_jax import train_step as step_lib

VARIANTS = ("flow_matching", "meanflow", "meanflow_guided")


def variants(config, names=VARIANTS):
  """name -> config copy, for each of `names` (a subset of VARIANTS)."""
  unknown = sorted(set(names) - set(VARIANTS))
  if unknown:
    raise ValueError(f"--variants: {unknown} unknown; allowed values are {list(VARIANTS)}.")
  out = {}
  for name in names:
    c = config.copy_and_resolve_references()
    if name == "flow_matching":
      c.meanflow.update(r_neq_t_ratio=0.0, guidance_omega=1.0, guidance_kappa=0.0)
    elif name == "meanflow":
      c.meanflow.update(guidance_omega=1.0, guidance_kappa=0.0)
    elif c.meanflow.guidance_omega == 1.0 and c.meanflow.guidance_kappa == 0.0:
      c.meanflow.update(guidance_omega=2.0, guidance_kappa=0.5)
    out[name] = c
  return out


def compiled_memory(compiled) -> dict:
  """Bytes per device of the compiled step (XLA's memory_analysis; {} where a backend has none)."""
  m = compiled.memory_analysis()
  if m is None:
    return {}
  return {"argument_bytes": m.argument_size_in_bytes, "output_bytes": m.output_size_in_bytes,
          "temp_bytes": m.temp_size_in_bytes, "alias_bytes": m.alias_size_in_bytes,
          "total_bytes": m.temp_size_in_bytes + m.argument_size_in_bytes +
                         m.output_size_in_bytes - m.alias_size_in_bytes}


def batch_for(config, mesh):
  """One global batch on the mesh: the real reader for in-memory sets, random arrays of the file
  readers' shapes otherwise (input_pipeline.STEP_KEYS; latents add the posterior std and flips)."""
  if config.data.name in ("digits", "checkerboard"):
    return sharding_lib.global_batch(next(input_pipeline.train_iterator(config, 0)), mesh)
  d, b = config.data, config.train.global_batch_size
  rng = np.random.default_rng(0)
  image = lambda: rng.standard_normal((b, d.image_size, d.image_size, d.channels), np.float32)
  batch = {"x": image()}
  if d.name == "imagenet_latents":
    batch.update(x_std=0.1 * np.abs(image()), x_flip=image(), x_flip_std=0.1 * np.abs(image()))
  batch["label"] = rng.integers(0, max(d.num_classes, 1), (b,)).astype(np.int32)
  return sharding_lib.global_batch(batch, mesh)


def build(config, mesh) -> dict:
  """Compiles the trainer's step for `config`: step, state, batch, compile_s, flops, memory."""
  model, opt = ts.build_model(config), ts.make_optimizer(config)
  state, shardings = ts.create_sharded_state(config, model, opt, mesh, jax.random.key(0))
  step = step_lib.jit_train_step(step_lib.make_train_step(config, model, opt), mesh, shardings)
  batch = batch_for(config, mesh)
  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {"step": compiled, "state": state, "batch": batch, "compile_s": compile_s,
          "flops": float((cost or {}).get("flops", 0.0)), "memory": compiled_memory(compiled)}


def first_loss(entry) -> float:
  """Runs one step (the first, from the initial state) and returns its loss."""
  state, metrics = entry["step"](entry["state"], entry["batch"])
  entry["state"] = state
  return float(jax.device_get(metrics["loss"]))


def timed(entry, n):
  if n <= 0:
    return 0.0, 0.0
  state, step, batch = entry["state"], entry["step"], entry["batch"]
  cpu0, t0 = time.process_time(), time.perf_counter()
  for _ in range(n):
    state, metrics = step(state, batch)
  jax.block_until_ready((state, metrics))
  entry["state"] = state
  return time.perf_counter() - t0, time.process_time() - cpu0


def summary(entry, step_s: float, batch: int, peak_tflops: float = 0.0) -> dict:
  """Per-variant figures: images/s, FLOPs, achieved FLOP/s, MFU against `peak_tflops` if given."""
  out = {"median_step_s": step_s, "images_per_s": batch / step_s, "compile_s": entry["compile_s"],
         "flops_per_image": entry["flops"] / batch,
         "achieved_tflops": entry["flops"] / step_s / 1e12, **entry["memory"]}
  if "loss0" in entry:
    out["first_step_loss"] = entry["loss0"]
  if peak_tflops:
    out["mfu"] = out["achieved_tflops"] / peak_tflops
  return out


def run(config, names=VARIANTS, repeats=5, steps_per_round=10, warmup=3, peak_tflops=0.0,
        mesh=None) -> dict:
  """Builds, warms up and times each variant (rounds interleaved); the JSON object of main()."""
  mesh = mesh or sharding_lib.make_mesh(config.sharding.fsdp)
  runs = {}
  for name, cfg in variants(config, names).items():
    runs[name] = build(cfg, mesh)
    runs[name]["loss0"] = first_loss(runs[name])
    timed(runs[name], warmup)
  wall, cpu = {k: [] for k in runs}, {k: [] for k in runs}
  for _ in range(repeats):
    for name, entry in runs.items():
      w, c = timed(entry, steps_per_round)
      wall[name].append(w / steps_per_round)
      cpu[name].append(c / steps_per_round)
  batch = config.train.global_batch_size
  out = {"config": {"model": config.model.variant, "depth": config.model.depth,
                    "hidden_size": config.model.hidden_size, "batch": batch,
                    "compute_dtype": config.model.compute_dtype,
                    "matmul_precision": config.model.get("matmul_precision", "default"),
                    "attention_impl": config.model.attention_impl,
                    "image": [config.data.image_size, config.data.image_size, config.data.channels]},
         "device": str(jax.devices()[0].device_kind), "num_devices": jax.device_count(),
         "jax": jax.__version__, "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
  med = {k: statistics.median(v) for k, v in wall.items()}
  for name, entry in runs.items():
    out[name] = dict(summary(entry, med[name], batch, peak_tflops),
                     cpu_s_per_step=statistics.median(cpu[name]))
  if "flow_matching" in med:
    for name in ("meanflow", "meanflow_guided"):
      if name in med:
        out[f"ratio_{name}_vs_fm"] = med[name] / med["flow_matching"]
    if "meanflow" in runs and "total_bytes" in out["meanflow"]:
      out["memory_ratio_meanflow_vs_fm"] = (out["meanflow"]["total_bytes"]
                                            / out["flow_matching"]["total_bytes"])
  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:  # Process-wide, after every variant ran: an upper bound.
    out["device_peak_bytes_after_all_runs"] = stats["peak_bytes_in_use"]
  return out


def main(argv):
  del argv
  names = tuple(n for n in FLAGS.variants.split(",") if n)
  try:
    out = run(FLAGS.config, names, FLAGS.repeats, FLAGS.steps_per_round, FLAGS.warmup,
              FLAGS.peak_tflops)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", "configs/default.py", "Config to benchmark.")
  flags.DEFINE_string("variants", ",".join(VARIANTS), "Comma-separated subset of " + str(VARIANTS))
  flags.DEFINE_integer("repeats", 5, "Timed rounds; each round runs every variant once.")
  flags.DEFINE_integer("steps_per_round", 10, "Steps per timed measurement.")
  flags.DEFINE_integer("warmup", 3, "Untimed steps per variant after compilation.")
  flags.DEFINE_float("peak_tflops", 0.0, "Peak TFLOP/s for MFU (H100 SXM: 989 bf16, 495 TF32).")
  FLAGS = flags.FLAGS
  from mf_jax import cli  # pylint: disable=g-import-not-at-top
  cli.run_absl(main, "benchmarks.train_step")
