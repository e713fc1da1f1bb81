"""Times the compiled train step of flow matching, MeanFlow, and MeanFlow with guidance, side by side.

  python -m benchmarks.train_step --config=configs/default.py [--config.model.compute_dtype=bfloat16]

(a) flow matching: r != t fraction 0, no guidance calls; (b) MeanFlow without guidance; (c) MeanFlow
with guidance in the target (omega = 2, kappa = 0.5 unless the config already guides). Repetitions
are interleaved after warm-up, medians are compared as ratios, and one JSON object is printed with
images/s, peak memory, XLA's FLOPs per image and the achieved FLOP/s. CPU time per step is also
reported, since wall time on a shared machine includes other processes' load.
"""
import json
import resource
import statistics
import time

import jax
from absl import flags
from ml_collections import config_flags

import input_pipeline
from mf_jax import sharding as sharding_lib
from mf_jax import train_state as ts
from mf_jax import train_step as step_lib

config_flags.DEFINE_config_file("config", "configs/default.py", "Config to benchmark.")
flags.DEFINE_integer("repeats", 5, "Timed rounds; each round runs every variant once.")
flags.DEFINE_integer("steps_per_round", 10, "Steps per timed measurement.")
flags.DEFINE_integer("warmup", 3, "Untimed steps per variant after compilation.")
FLAGS = flags.FLAGS


def variants(config):
  fm, mf, guided = (config.copy_and_resolve_references() for _ in range(3))
  fm.meanflow.update(r_neq_t_ratio=0.0, guidance_omega=1.0, guidance_kappa=0.0)
  mf.meanflow.update(guidance_omega=1.0, guidance_kappa=0.0)
  if guided.meanflow.guidance_omega == 1.0 and guided.meanflow.guidance_kappa == 0.0:
    guided.meanflow.update(guidance_omega=2.0, guidance_kappa=0.5)
  return {"flow_matching": fm, "meanflow": mf, "meanflow_guided": guided}


def memory_stats(compiled):
  """Peak bytes: the device's allocator where it reports one, else XLA's compile-time analysis."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return {"peak_bytes_device": stats["peak_bytes_in_use"]}
  m = compiled.memory_analysis()
  if m is None:
    return {}
  return {"temp_bytes_compiled": m.temp_size_in_bytes,
          "total_bytes_compiled": m.temp_size_in_bytes + m.argument_size_in_bytes +
                                  m.output_size_in_bytes - m.alias_size_in_bytes}


def build(config, mesh):
  model, opt = ts.build_model(config), ts.make_optimizer(config)
  state, shardings = ts.create_sharded_state(config, model, opt, mesh, jax.random.key(0))
  step = step_lib.jit_train_step(step_lib.make_train_step(config, model, opt), mesh, shardings)
  batch = sharding_lib.global_batch(next(input_pipeline.train_iterator(config, 0)), mesh)
  compiled = step.lower(state, batch).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {"step": compiled, "state": state, "batch": batch,
          "flops": float((cost or {}).get("flops", 0.0)), "memory": memory_stats(compiled)}


def timed(entry, n):
  state, step, batch = entry["state"], entry["step"], entry["batch"]
  cpu0, t0 = time.process_time(), time.perf_counter()
  for _ in range(n):
    state, metrics = step(state, batch)
  jax.block_until_ready((state, metrics))
  entry["state"] = state
  return time.perf_counter() - t0, time.process_time() - cpu0


def main(argv):
  del argv
  config = FLAGS.config
  mesh = sharding_lib.make_mesh(config.sharding.fsdp)
  runs = {name: build(cfg, mesh) for name, cfg in variants(config).items()}
  for entry in runs.values():
    timed(entry, FLAGS.warmup)
  wall = {k: [] for k in runs}
  cpu = {k: [] for k in runs}
  for _ in range(FLAGS.repeats):
    for name, entry in runs.items():
      w, c = timed(entry, FLAGS.steps_per_round)
      wall[name].append(w / FLAGS.steps_per_round)
      cpu[name].append(c / FLAGS.steps_per_round)
  batch = config.train.global_batch_size
  out = {"config": {"model": config.model.variant, "depth": config.model.depth,
                    "hidden_size": config.model.hidden_size, "batch": batch,
                    "compute_dtype": config.model.compute_dtype,
                    "image": [config.data.image_size, config.data.image_size, config.data.channels]},
         "device": str(jax.devices()[0].device_kind), "num_devices": jax.device_count(),
         "jax": jax.__version__, "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
  med = {k: statistics.median(v) for k, v in wall.items()}
  for name, entry in runs.items():
    out[name] = {"median_step_s": med[name], "cpu_s_per_step": statistics.median(cpu[name]),
                 "images_per_s": batch / med[name], "flops_per_image": entry["flops"] / batch,
                 "achieved_flops_per_s": entry["flops"] / med[name], **entry["memory"]}
  out["ratio_meanflow_vs_fm"] = med["meanflow"] / med["flow_matching"]
  out["ratio_guided_vs_fm"] = med["meanflow_guided"] / med["flow_matching"]
  mem_key = next((k for k in ("peak_bytes_device", "total_bytes_compiled") if k in out["meanflow"]), None)
  if mem_key:
    out["memory_ratio_meanflow_vs_fm"] = out["meanflow"][mem_key] / out["flow_matching"][mem_key]
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  from mf_jax import cli  # pylint: disable=g-import-not-at-top
  cli.run_absl(main, "benchmarks.train_step")
