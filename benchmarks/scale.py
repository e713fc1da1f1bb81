"""Compiled FLOPs, memory and communication of a config's real train step on N simulated devices.

  python -m benchmarks.scale --config=configs/imagenet_b2.py --devices=8 [--fsdp=K] [--fit]
  python -m benchmarks.scale --all [--write_results]   # every ImageNet and CIFAR config at 8 and 64
  PYTHONPATH=/tmp/libtpu python -m benchmarks.scale --platform=tpu --devices=8 --config=...
  PYTHONPATH=/tmp/gpuvenv python -m benchmarks.scale --platform=gpu --devices=8 --config=...

The trainer's own step (mf_jax.train_step.make_train_step / jit_train_step) and 1-NFE sampler
(mf_jax.generate.make_sampler) are lowered with abstract inputs (jax.ShapeDtypeStruct carrying the
trainer's shardings; the state's shapes come from jax.eval_shape of train_state.init_state) and
compiled for N CPU devices, so nothing large is allocated. XLA's own accounting is read back:
cost_analysis() (FLOPs of one device's program), memory_analysis() (bytes per device), and the
collectives in the partitioned HLO with their bytes. One JSON object is printed.

Projections divide the per-device FLOPs by (peak x MFU): H100 989 dense bf16 TFLOP/s or 495 TF32
(the config's model.compute_dtype picks which applies), TPU v5p 459 bf16 TFLOP/s (TPUs run float32
matmuls as bf16 passes at default precision). They ignore communication and input time.

"Images" are the samples the step trains on: the global batch for MeanFlow and MAE, the generated
samples (classes_per_step x num_neg) for Drifting. --fit compiles a second time at twice the batch
and extrapolates memory linearly to the largest per-device batch that fits --device_memory_gb.

--platform=tpu compiles instead for a TPU v5p slice (v5p:2x2x2 for 8 chips, 4x4x4 for 64) ahead of
time with libtpu, on this CPU machine, without TPU hardware (`jax.experimental.topologies`). Those
memory figures are an accelerator compiler's: its scheduler honours rematerialisation, which the
CPU backend's does not (a remat config's CPU temporaries overstate it several-fold), and its
collectives are the accelerator pipeline's. libtpu stays out of requirements*.txt (LIBTPU_HINT).
--platform=gpu does the same for N H100 SXM on one host with the CUDA PJRT plugin (jax-cuda12-pjrt
and jax-cuda12-plugin wheels, GPU_HINT; no driver or GPU needed): gpu_targets/h100_sxm.txtpb
describes the card to XLA's GPU compiler.

Simulated devices: XLA reads the device count once, when the backend starts, so this module sets
XLA_FLAGS from --devices before jax is imported; --all runs each (config, N) in a subprocess.
"""
import os
import re
import sys


def _set_device_count(argv) -> None:
  """--devices=N -> XLA_FLAGS, before jax starts (a no-op once jax is imported)."""
  n = None
  for i, arg in enumerate(argv):
    if arg.startswith("--devices="):
      n = arg.split("=", 1)[1]
    elif arg == "--devices" and i + 1 < len(argv):
      n = argv[i + 1]
  if "jax" in sys.modules:
    return
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  # A TPU topology is compiled for without TPU hardware: libtpu must not query a metadata server
  # or hold its one-process lock (a --all run starts one subprocess per row).
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  if n is None:
    return
  flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", ""))
  os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={int(n)}".strip()


if __name__ == "__main__":
  _set_device_count(sys.argv)

# pylint: disable=wrong-import-position
import glob  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from mf_jax import config_checks, generate  # noqa: E402
from mf_jax import sharding as sharding_lib  # noqa: E402
from mf_jax import train_state as ts  # noqa: E402
from mf_jax import train_step as step_lib  # noqa: E402

from benchmarks import scale_table, xla_accounting  # noqa: E402

# Codegen only: the optimised HLO, and so every figure read here, is unchanged (checked on the tiny
# configs); compiles take about a third less CPU time.
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
# TPU v5p slices by chip count (one device per chip), for --platform=tpu without --topology.
V5P_TOPOLOGIES = {4: "v5p:2x2x1", 8: "v5p:2x2x2", 16: "v5p:2x2x4", 32: "v5p:2x4x4", 64: "v5p:4x4x4",
                  128: "v5p:4x4x8", 256: "v5p:4x8x8"}
GPU_TARGET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu_targets", "h100_sxm.txtpb")
GPU_HINT = ("pip install --no-deps --target=/tmp/gpuvenv 'jax-cuda12-pjrt==JAX_VERSION' "
            "'jax-cuda12-plugin==JAX_VERSION' (no CUDA, driver or GPU needed) and run with "
            "PYTHONPATH=/tmp/gpuvenv; keep it out of the project's venv")
LIBTPU_HINT = ("pip install --target=/tmp/libtpu 'libtpu==0.0.42.*' (the version jax[tpu] pins for "
               "this jax) and run with PYTHONPATH=/tmp/libtpu; keep it out of the project's venv")


# ---------------------------------------------------------------------------------------------
# Abstract inputs.

def _with_shardings(tree, shardings):
  return jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)


def abstract_state(config, model, optimizer, mesh):
  """(state of ShapeDtypeStructs with the trainer's shardings, the shardings), nothing allocated."""
  abstract = jax.eval_shape(lambda k: ts.init_state(config, model, optimizer, k), jax.random.key(0))
  shardings = ts.state_shardings(mesh, abstract)
  return _with_shardings(abstract, shardings), shardings


def abstract_batch(config, mesh):
  """The arrays input_pipeline.train_iterator yields for one global batch, as ShapeDtypeStructs."""
  d, b = config.data, config.train.global_batch_size
  sharding = sharding_lib.batch_sharding(mesh)
  image = jax.ShapeDtypeStruct((b, d.image_size, d.image_size, d.channels), jnp.float32,
                               sharding=sharding)
  keys = ("x", "x_std", "x_flip", "x_flip_std") if d.name == "imagenet_latents" else ("x",)
  batch = {k: image for k in keys}
  batch["label"] = jax.ShapeDtypeStruct((b,), jnp.int32, sharding=sharding)
  return batch


def images_per_step(config) -> int:
  return ts.objective(config).images_per_step(config)


def sample_batch_size(config, num_devices: int) -> int:
  """The evaluator's chunk (eval.batch_size), rounded up to a multiple of the device count."""
  b = max(config.eval.batch_size, num_devices)
  return -(-b // num_devices) * num_devices


# ---------------------------------------------------------------------------------------------
# Compilation.

def prepare_config(config, feature_encoder: bool):
  """A resolved copy; with feature_encoder, frozen networks the config leaves unset are compiled
  as placeholders of the real shapes (e.g. drifting's MAE encoder)."""
  config = config.copy_and_resolve_references()
  if feature_encoder:
    config = ts.objective(config).with_frozen_placeholders(config)
  return config


def compiler_options(mesh) -> dict:
  """CPU: codegen shortcuts that leave the optimised HLO unchanged; TPU: the compiler's defaults."""
  return COMPILER_OPTIONS if mesh.devices.flat[0].platform == "cpu" else {}


def target_devices(platform: str, num_devices: int, topology: str = ""):
  """The devices to compile for: N simulated CPU devices, or a TPU slice described by libtpu.

  TPU: `jax.experimental.topologies` describes a slice without TPU hardware, and XLA's TPU
  compiler compiles for it ahead of time. Its memory figures are the accelerator's own (its
  scheduler honours rematerialisation, which the CPU backend's does not), and its collectives are
  those of the TPU pipeline (e.g. all-reduces combined across differentiated passes).
  """
  if platform == "cpu":
    if jax.device_count() < num_devices:
      raise ValueError(f"--devices={num_devices} but jax sees {jax.device_count()} CPU devices: run "
                       "as `python -m benchmarks.scale` so the flag is read before jax starts.")
    return jax.devices()[:num_devices]
  if platform == "gpu":
    return gpu_devices(num_devices)
  if platform != "tpu":
    raise ValueError(f"--platform={platform!r}: use cpu (simulated devices), tpu (libtpu AOT) or "
                     "gpu (CUDA plugin AOT).")
  try:
    import libtpu  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError as e:
    raise ValueError(f"--platform=tpu needs libtpu: {LIBTPU_HINT}.") from e
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  topology = topology or V5P_TOPOLOGIES.get(num_devices)
  if not topology:
    raise ValueError(f"--devices={num_devices}: no default v5p slice; pick one of "
                     f"{sorted(V5P_TOPOLOGIES)} or pass --topology (e.g. v5p:2x2x2).")
  devices = list(topologies.get_topology_desc(platform="tpu", topology_name=topology).devices)
  if len(devices) != num_devices:
    raise ValueError(f"--topology={topology} has {len(devices)} devices, --devices={num_devices}.")
  return devices


def gpu_devices(num_devices: int, target: str = GPU_TARGET):
  """num_devices H100s on one host, described for XLA's GPU compiler without a GPU.

  The CUDA PJRT plugin creates a compile-only topology from a target description
  (gpu_targets/h100_sxm.txtpb) and a "slices x hosts x devices" shape; nothing touches CUDA, so it
  works on a CPU machine (JAX_PLATFORMS=cpu keeps the plugin from probing for a driver).
  """
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  hint = GPU_HINT.replace("JAX_VERSION", jax.__version__)
  try:
    import jax_plugins.xla_cuda12  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError as e:
    raise ValueError(f"--platform=gpu needs the CUDA PJRT plugin: {hint}.") from e
  with open(target) as f:
    target_config = f.read()
  topology = topologies.get_topology_desc(platform="cuda", topology_name="",
                                          target_config=target_config,
                                          topology=f"1x1x{num_devices}")
  return list(topology.devices)


def compile_train_step(config, mesh):
  """The trainer's jitted step, compiled for `mesh` with abstract inputs -> (compiled, state)."""
  model, optimizer = ts.build_model(config), ts.make_optimizer(config)
  state, shardings = abstract_state(config, model, optimizer, mesh)
  step = step_lib.jit_train_step(step_lib.make_train_step(config, model, optimizer, mesh=mesh),
                                 mesh, shardings)
  return step.lower(state, abstract_batch(config, mesh)).compile(compiler_options(mesh)), state


def compile_sample_step(config, mesh, params):
  """The 1-NFE sampler of generate.make_sampler, compiled for `mesh`; None for a method that does
  not sample (MAE)."""
  model = ts.build_model(config)
  b, d = sample_batch_size(config, mesh.size), config.data
  batch = sharding_lib.batch_sharding(mesh)
  noise = jax.ShapeDtypeStruct((b, d.image_size, d.image_size, d.channels), jnp.float32,
                               sharding=batch)
  labels = jax.ShapeDtypeStruct((b,), jnp.int32, sharding=batch)
  sample_fn = generate.make_sampler(config, model, mesh)
  if sample_fn is None:
    return None, 0
  # num_steps=1, positionally: a jit with in_shardings takes no keyword arguments.
  return sample_fn.lower(params, noise, labels, 1).compile(compiler_options(mesh)), b


def param_bytes(params) -> int:
  return int(sum(a.size * a.dtype.itemsize for a in jax.tree_util.tree_leaves(params)))


def measure_train(config, mesh, hlo_path: str = "") -> dict:
  """FLOPs, memory and collectives of one train step on `mesh` (figures per device); hlo_path:
  also write the compiled HLO text there (gzip), to re-read its accounting without a compile."""
  t0 = time.perf_counter()
  compiled, state = compile_train_step(config, mesh)
  if hlo_path:
    with gzip.open(hlo_path, "wt") as f:
      f.write(compiled.as_text())
  images = images_per_step(config)
  out = {"compile_s": time.perf_counter() - t0, "images_per_step": images,
         **xla_accounting.step_accounting(compiled)}
  out.update(flops_per_image=out["flops_per_device"] * mesh.size / images,
             memory_per_device=xla_accounting.memory_per_device(compiled),
             param_bytes=param_bytes(state.params), _state=state)
  # 1.0: gradients all-reduced once (data parallel). See tests/test_scale.py for MeanFlow's 2.0.
  out["all_reduce_bytes_per_param_byte"] = (
      out["collectives"]["all-reduce"]["operand_bytes"] / max(out["param_bytes"], 1))
  return out


def fit_batch(config, mesh, measured: dict, device_memory_gb: float) -> dict:
  """Largest per-device batch within device memory, from a second compile at twice the batch.

  Per-device memory is affine in the per-device batch (state + per-sample activations), so two
  points give it. Drifting scales its classes per step (its generated batch); others the batch.
  """
  bigger = ts.objective(config).grown_batch(config)
  second = measure_train(bigger, mesh)
  n = mesh.size
  b1, b2 = measured["images_per_step"] / n, second["images_per_step"] / n
  m1 = measured["memory_per_device"]["total_bytes"]
  m2 = second["memory_per_device"]["total_bytes"]
  per_image, fixed, largest = scale_table.affine_memory_fit(b1, m1, b2, m2, device_memory_gb)
  return {"device_memory_gb": device_memory_gb, "bytes_per_image": per_image, "fixed_bytes": fixed,
          "fits": m1 <= device_memory_gb * 1e9, "largest_batch_per_device": largest,
          "compile_s": second["compile_s"]}


def measure(config, devices=None, fsdp: int = 1, mfu: float = 0.4, sample: bool = True,
            fit: bool = False, device_memory_gb: float = 80.0, feature_encoder: bool = True,
            floor: bool = False, hlo_path: str = "") -> dict:
  """Every figure of one (config, device count, FSDP size) as a JSON-ready dict."""
  # Before prepare_config names a placeholder encoder workdir; compiling reads no files.
  config_checks.validate_static(config)
  config = prepare_config(config, feature_encoder)
  devices = jax.devices() if devices is None else list(devices)
  mesh = sharding_lib.make_mesh(fsdp, devices)
  m = config.model
  try:
    train = measure_train(config, mesh, hlo_path)
  except jax.errors.JaxRuntimeError as e:  # The TPU compiler refuses a step that overflows HBM.
    overflow = xla_accounting.hbm_overflow(str(e))
    if overflow is None:
      raise
    # The compiler message lists the largest allocations: kept to show what fills the chip.
    train = {"does_not_fit": dict(overflow, compiler_message=str(e)[:20000]),
             "images_per_step": images_per_step(config)}
  state = train.pop("_state", None)
  out = {
      "config": {"method": config.method, "model": m.name,
                 "variant": m.variant if m.name == "dit" else None,
                 "compute_dtype": m.compute_dtype, "remat": bool(m.remat),
                 "global_batch": config.train.global_batch_size,
                 "image": [config.data.image_size, config.data.image_size, config.data.channels],
                 "guided": False, "feature_encoder": False, "accum_passes": 1,
                 # The method's own facts (MeanFlow: guided; Drifting: frozen encoder, passes).
                 **ts.objective(config).benchmark_facts(config, len(devices))},
      "devices": len(devices), "fsdp": fsdp, "jax": jax.__version__,
      "platform": devices[0].platform, "device_kind": devices[0].device_kind,
      "train": train,
  }
  if "does_not_fit" in train:
    return out
  if train["flops_per_device"]:
    out["train"]["projection"] = xla_accounting.projections(
        train["flops_per_device"], train["images_per_step"], m.compute_dtype, mfu)
  else:  # A compile-only GPU executable reports no cost analysis: FLOPs come from --platform=cpu.
    out["train"]["projection"] = None
  if fit:
    out["train"]["fit"] = fit_batch(config, mesh, train, device_memory_gb)
  if floor and out["config"]["guided"]:
    sample = True  # F, one forward per image, is read from the 1-NFE sampler.
  if sample:
    t0 = time.perf_counter()
    compiled, b = compile_sample_step(config, mesh, state.params)
    if compiled is not None:
      acc = xla_accounting.step_accounting(compiled)
      flops = acc["flops_per_device"]
      out["sample_1nfe"] = {
          "compile_s": time.perf_counter() - t0, "batch": b, **acc,
          "flops_per_image": flops * mesh.size / b,
          "memory_per_device": xla_accounting.memory_per_device(compiled),
          "projection": xla_accounting.projections(flops, b, m.compute_dtype, mfu)}
  if floor and out["config"]["guided"]:
    out["guidance_floor"] = guidance_floor(config, mesh, train["flops_per_image"],
                                           out["sample_1nfe"]["flops_per_image"])
  return out


def guidance_floor(config, mesh, guided_flops_per_image: float, forward_flops: float) -> dict:
  """The guided MeanFlow step against its FLOP floor (see mf_jax/meanflow.py, meanflow_loss).

  floor = U + (1 - class_dropout) (1 + r_neq_t_ratio) F: the unguided step U plus, for every row
  whose label is kept, the null-label forward, and for its r != t rows the conditional forward too
  (r = t rows reuse their own main forward). F is one forward per image. Rows outside the
  guidance interval are not subtracted: which rows they are depends on the sampled t, so a
  static-shape program cannot skip them.
  """
  unguided = config.copy_and_resolve_references()
  unguided.meanflow.update(guidance_omega=1.0, guidance_kappa=0.0)
  u = measure_train(unguided, mesh)
  u.pop("_state")
  mf = config.meanflow
  floor = u["flops_per_image"] + (1 - mf.class_dropout) * (1 + mf.r_neq_t_ratio) * forward_flops
  return {"forward_flops_per_image": forward_flops, "unguided_flops_per_image": u["flops_per_image"],
          "floor_flops_per_image": floor, "guided_flops_per_image": guided_flops_per_image,
          "guided_over_floor": guided_flops_per_image / floor,
          "in_forwards": {"unguided": u["flops_per_image"] / forward_flops,
                          "floor": floor / forward_flops,
                          "guided": guided_flops_per_image / forward_flops}}


# ---------------------------------------------------------------------------------------------
# Command line.

config_flags.DEFINE_config_file("config", "configs/tiny.py", "Config whose step is compiled.")
flags.DEFINE_integer("devices", 8, "Devices to compile for: simulated CPU devices (set before jax "
                     "starts) or the chips of the --platform=tpu slice.")
flags.DEFINE_enum("platform", "cpu", ["cpu", "tpu", "gpu"], "cpu: simulated host devices; tpu: "
                  "ahead-of-time compile for a TPU v5p slice with libtpu; gpu: for N H100s on one "
                  "host with the CUDA plugin; no accelerator needed (memory honours remat).")
flags.DEFINE_string("topology", "", "--platform=tpu: the slice, e.g. v5p:2x2x2 (default: the v5p "
                    "slice with --devices chips).")
flags.DEFINE_integer("fsdp", 1, "FSDP group size (overrides config.sharding.fsdp when > 1).")
flags.DEFINE_float("mfu", 0.4, "Model-FLOP utilisation assumed by the projections.")
flags.DEFINE_bool("sample", True, "Also compile the 1-NFE sampling step.")
flags.DEFINE_bool("fit", False, "Also find the largest per-device batch that fits (second compile).")
flags.DEFINE_bool("floor", False, "Guided MeanFlow: also compile the unguided step and report "
                  "the guided step against its FLOP floor.")
flags.DEFINE_float("device_memory_gb", 80.0, "Device memory for --fit, in GB (1e9 bytes).")
flags.DEFINE_bool("feature_encoder", True, "Drifting on images: include the frozen MAE encoder.")
flags.DEFINE_string("out", "", "Also write the JSON object to this file.")
flags.DEFINE_string("hlo_out", "", "Also write the train step's compiled HLO text (gzip) here.")
flags.DEFINE_bool("all", False, "Every ImageNet and CIFAR config at --all_devices, in subprocesses.")
flags.DEFINE_list("all_devices", ["8", "64"], "Device counts for --all.")
flags.DEFINE_list("all_configs", [], "Configs for --all (default: configs/imagenet_*.py, "
                  "configs/mae_latents.py, configs/cifar10*.py).")
flags.DEFINE_integer("timeout", 1800, "Seconds per (config, device count) in --all.")
flags.DEFINE_string("results_json", "/tmp/scale_all.json", "--all: where the raw figures go.")
flags.DEFINE_bool("write_results", False, "--all, --table_from: write the table into "
                  "benchmarks/RESULTS.md.")
flags.DEFINE_string("table_from", "", "Print (and --write_results) the table of a saved --all JSON.")
FLAGS = flags.FLAGS


def all_configs():
  names = sorted(glob.glob("configs/imagenet_*.py")) + ["configs/mae_latents.py"]
  names += sorted(glob.glob("configs/cifar10*.py"))
  return [n for n in names if os.path.basename(n) != "imagenet_base.py" and os.path.exists(n)]


def run_all():
  """One subprocess per (config, device count) with a time limit, config by config.

  The sampler is compiled at the first device count only. The largest batch that fits comes from
  the first two device counts (same state per device, different per-device batch; see
  scale_table.fitting_batch), so no extra compile is needed.
  """
  rows, t_all = [], time.perf_counter()
  counts = [int(x) for x in FLAGS.all_devices]
  for path in FLAGS.all_configs or all_configs():
    for n in counts:
      out_file = f"/tmp/scale_{os.path.basename(path)[:-3]}_{FLAGS.platform}{n}.json"
      cmd = [sys.executable, "-m", "benchmarks.scale", f"--config={path}", f"--devices={n}",
             f"--platform={FLAGS.platform}", f"--mfu={FLAGS.mfu}", f"--sample={n == counts[0]}",
             f"--out={out_file}", f"--feature_encoder={FLAGS.feature_encoder}"]
      t0 = time.perf_counter()
      try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=FLAGS.timeout)
        if proc.returncode:
          row = {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
        else:
          with open(out_file) as f:
            row = json.load(f)
      except subprocess.TimeoutExpired:
        row = {"error": f"timed out after {FLAGS.timeout} s"}
      row.update(config_path=path, wall_s=time.perf_counter() - t0, devices=n)
      print(json.dumps({k: row.get(k) for k in ("config_path", "devices", "wall_s", "error")}),
            flush=True)
      rows.append(row)
      with open(FLAGS.results_json, "w") as f:  # After every row: a cut-off run keeps its figures.
        json.dump({"rows": rows, "total_wall_s": time.perf_counter() - t_all}, f, indent=1)
  summary = {"rows": rows, "total_wall_s": time.perf_counter() - t_all}
  with open(FLAGS.results_json, "w") as f:
    json.dump(summary, f, indent=1)
  if FLAGS.write_results:
    scale_table.write_results("benchmarks/RESULTS.md", scale_table.results_table(rows))
  print(json.dumps({"total_wall_s": summary["total_wall_s"], "results_json": FLAGS.results_json}))


def main(argv):
  del argv
  if FLAGS.all:
    run_all()
    return
  if FLAGS.table_from:
    with open(FLAGS.table_from) as f:
      table = scale_table.results_table(json.load(f)["rows"])
    if FLAGS.write_results:
      scale_table.write_results("benchmarks/RESULTS.md", table)
    print(table)
    return
  try:
    devices = target_devices(FLAGS.platform, FLAGS.devices, FLAGS.topology)
  except ValueError as e:  # A missing plugin or a bad slice: one line naming the fix.
    sys.stderr.write(f"scale: error: {e}\n")
    sys.exit(2)
  config = FLAGS.config
  fsdp = FLAGS.fsdp if FLAGS.fsdp > 1 else config.sharding.fsdp
  out = measure(config, devices=devices, fsdp=fsdp, mfu=FLAGS.mfu, sample=FLAGS.sample,
                fit=FLAGS.fit,
                device_memory_gb=FLAGS.device_memory_gb, feature_encoder=FLAGS.feature_encoder,
                floor=FLAGS.floor, hlo_path=FLAGS.hlo_out)
  text = json.dumps(out, indent=1)
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      f.write(text)
  print(text)


if __name__ == "__main__":
  from mf_jax import cli  # pylint: disable=g-import-not-at-top
  cli.run_absl(main, "benchmarks.scale")
