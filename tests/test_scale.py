"""XLA's accounting of the real train steps on simulated devices (benchmarks/scale.py).

Every method's step must split its work over the devices (per-device FLOPs fall as 1/N from 1 to 8
devices), synchronise gradients once per differentiated network pass (an all-reduce of the gradient
bytes, nothing activation-sized), and hold less per device with FSDP. The configs are tiny (small
MLP or encoder, digits-sized images), with a batch large enough that the per-sample work dwarfs
the per-parameter optimizer work that data parallelism replicates by design.
"""
import functools
import json
import os
import subprocess
import sys

import jax
import pytest

from benchmarks import scale, scale_table, xla_accounting
from configs import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(case: str):
  config = tiny.get_config()
  config.model.update(name="mlp", mlp_widths=(64, 64))
  config.train.global_batch_size = 2048
  if case == "meanflow_state_heavy":  # Parameters and Adam state dominate memory: FSDP's case.
    config.model.mlp_widths = (512, 512, 512)
    config.train.global_batch_size = 64
  if case == "meanflow_guided":
    config.meanflow.update(guidance_omega=2.0, guidance_kappa=0.5)
  elif case.startswith("drifting"):  # On pixels: the banks' samples outweigh the parameters.
    config.method = "drifting"
    config.data.update(name="imagenet_pixels", image_size=16, channels=3)
    config.drifting.update(classes_per_step=8, num_pos=16, num_neg=16, num_unc=4, queue_len=16,
                           temperatures=(0.05,))
    if case == "drifting_accumulated":  # 2 classes per device on 4 devices, in 2 passes.
      config.drifting.accum_classes_per_device = 1
  elif case == "mae":
    config.method = "mae"
    config.mae.update(widths=(8, 16), blocks_per_stage=1, groups=4, decoder_width=8)
    config.train.global_batch_size = 512
  return config


# Network passes whose parameter gradients the partitioner reduces separately. MeanFlow splits its
# batch into the r != t rows (jvp) and the r = t rows (plain forward), so the CPU backend reduces
# two partial gradients; accelerator pipelines fold add(all-reduce(a), all-reduce(b)) into one
# (AllReduceReassociate), the CPU pipeline does not. Measured: MeanFlow-B/2 compiled for TPU v5p
# (benchmarks/scale.py --platform=tpu) all-reduces 1.00x its parameter bytes at 8 and 64 chips.
GRADIENT_PASSES = {"meanflow": 2, "meanflow_guided": 2, "drifting": 1, "mae": 1}


@functools.lru_cache(maxsize=None)
def measured(case: str, num_devices: int, fsdp: int = 1):
  return scale.measure(tiny_config(case), devices=jax.devices()[:num_devices], fsdp=fsdp,
                       sample=False)["train"]


def bank_traffic(case):
  """Bytes the drifting banks move per step (0 otherwise): the real samples pushed and the
  positives and guidance negatives drawn. The banks are split over the devices along an axis of
  the sample (image rows), so both are local reads and writes plus one all-to-all that leaves each
  device its own rows (batch, classes): each device sends at most 1/N of these bytes."""
  if not case.startswith("drifting"):
    return 0
  config = tiny_config(case)
  d, sample = config.drifting, 4 * config.data.image_size ** 2 * config.data.channels
  draw = d.classes_per_step * (d.num_pos + d.num_unc) * sample
  push = config.train.global_batch_size * sample
  return draw + push


def data_parallel_checks(case):
  one, eight = measured(case, 1), measured(case, 8)
  # 1/N: the replicated optimizer and EMA work (~90 FLOPs per parameter) is < 1% of these steps.
  assert 8 * eight["flops_per_device"] / one["flops_per_device"] == pytest.approx(1.0, abs=0.03)
  # Gradients: each parameter byte all-reduced once per pass (the metrics add a few scalars); no
  # activation or bank sample is all-reduced (the drifting banks' draws were, 2.1x the parameter
  # bytes of this case, before the banks were split along the image rows).
  comm, params = eight["collectives"], eight["param_bytes"]
  assert comm["all-reduce"]["operand_bytes"] / params == pytest.approx(GRADIENT_PASSES[case],
                                                                       abs=0.01)
  # Everything else: each device's share of the banks' traffic, index gathers and a few scalars.
  other = sum(v["operand_bytes"] for k, v in comm.items() if k != "all-reduce")
  assert other < 1.1 * bank_traffic(case) / 8 + 0.05 * params
  assert one["collectives"]["all-reduce"]["count"] == 0


@pytest.mark.parametrize("case", ["meanflow", "meanflow_guided", "mae", "drifting"])
def test_step_is_data_parallel(case):
  data_parallel_checks(case)


def test_accumulated_drifting_step_reduces_each_pass_and_counts_every_pass():
  """Gradient accumulation (drifting.accum_classes_per_device): one gradient all-reduce per pass,
  and FLOPs that count every pass: nearly all the work sits in the loops over the 2 groups, which
  XLA's cost analysis counts once; two statistics passes (forwards without gradients) come on top
  of the one-pass step's work."""
  plain, accumulated = measured("drifting", 8), measured("drifting_accumulated", 4)
  assert accumulated["collectives"]["all-reduce"]["operand_bytes"] / (
      accumulated["param_bytes"]) == pytest.approx(2.0, abs=0.01)
  assert accumulated["loop_trip_counts"].count(2) >= 3  # The three passes over the groups.
  assert accumulated["flops_per_device"] > 1.8 * accumulated["xla_flops_per_device"]
  # Each statistics pass is a forward, at most one one-pass step (measured here: 2.37x).
  ratio = 4 * accumulated["flops_per_device"] / (8 * plain["flops_per_device"])
  assert 1.5 < ratio < 3.0, ratio


def test_fsdp_shards_state_and_gradients():
  dp, fsdp = measured("meanflow_state_heavy", 8), measured("meanflow_state_heavy", 8, fsdp=8)
  assert fsdp["memory_per_device"]["argument_bytes"] < 0.5 * dp["memory_per_device"]["argument_bytes"]
  assert fsdp["memory_per_device"]["total_bytes"] < dp["memory_per_device"]["total_bytes"]
  # Gradients are no longer all-reduced whole (data parallel: 2x the parameter bytes here); what
  # remains are arrays too small to shard and any activation partial sums XLA prefers to moving
  # the parameters.
  dp_bytes = dp["collectives"]["all-reduce"]["operand_bytes"]
  assert dp_bytes >= dp["param_bytes"]
  assert fsdp["collectives"]["all-reduce"]["operand_bytes"] < 0.25 * dp_bytes


def test_scale_cli_prints_every_field():
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.scale", "--config=configs/tiny.py", "--devices=2",
       "--config.model.name=mlp", "--config.model.mlp_widths=(32,)", "--fit"],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
  out = json.loads(proc.stdout[proc.stdout.index("{"):])
  assert out["devices"] == 2
  train = out["train"]
  for key in ("flops_per_device", "xla_flops_per_device", "loop_trip_counts", "flops_per_image",
              "memory_per_device", "collectives",
              "projection", "fit", "param_bytes", "images_per_step"):
    assert key in train, key
  assert set(train["collectives"]) == set(xla_accounting.COLLECTIVES)
  # The figures against facts computed here without XLA: the state's bytes from its shapes (data
  # parallel on 2 devices: every device holds the whole state and half the batch of 16), and a
  # floor on the step's FLOPs from the MLP's two matmuls (forward, and twice that backward).
  from mf_jax import train_state as ts  # pylint: disable=import-outside-toplevel
  config = tiny.get_config()
  config.model.update(name="mlp", mlp_widths=(32,))
  abstract = jax.eval_shape(lambda k: ts.init_state(
      config, ts.build_model(config), ts.make_optimizer(config), k), jax.random.key(0))
  nbytes = lambda tree: sum(a.size * a.dtype.itemsize for a in jax.tree_util.tree_leaves(tree))
  assert train["param_bytes"] == nbytes(abstract.params)
  batch_bytes = 8 * (8 * 8 * 1 * 4 + 4)  # x float32 [8, 8, 8, 1] and labels int32 [8].
  assert train["memory_per_device"]["argument_bytes"] == nbytes(abstract) + batch_bytes
  pixels, hidden = 8 * 8 * 1, 32
  assert train["flops_per_image"] >= 3 * 2 * (pixels * hidden + hidden * pixels)
  assert train["fit"]["bytes_per_image"] > 0 and train["fit"]["largest_batch_per_device"] > 8
  assert out["sample_1nfe"]["flops_per_image"] > 0
  assert out["platform"] == "cpu"


def test_fitting_batch_inverts_an_affine_memory_line():
  """Two rows of one config (8 and 64 devices, the same state per device) give the line
  memory = fixed + per_image * batch_per_device; the largest batch is where it meets the limit."""
  fixed, per_image, images = 3e9, 0.25e9, 4096

  def row(devices):
    memory = fixed + per_image * images / devices
    return {"devices": devices, "fsdp": 1, "train": {
        "images_per_step": images, "memory_per_device": {"total_bytes": memory}}}

  assert scale_table.fitting_batch(row(8), row(64), 80.0) == int((80e9 - fixed) // per_image)
  assert scale_table.fitting_batch(row(8), {"error": "timed out"}) is None


def test_a_step_that_overflows_a_chip_still_gives_its_memory_line():
  """The TPU compiler refuses an overflowing step but names its temporaries; with the 64-device
  row's arguments and outputs that point gives the same affine line as a compiled one."""
  message = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
             "temporaries (117.39G) exceeds available HBM (95.74G).")
  overflow = xla_accounting.hbm_overflow(message)
  assert overflow == {"temporaries_bytes": 117.39 * 2**30, "hbm_bytes": 95.74 * 2**30}
  assert xla_accounting.hbm_overflow("INTERNAL: something else") is None
  fixed, per_image, images = 3e9, 0.5e9, 4096
  temps = lambda devices: 1e9 + per_image * images / devices
  small = {"devices": 8, "fsdp": 1, "train": {"images_per_step": images, "does_not_fit": {
      "temporaries_bytes": temps(8), "hbm_bytes": 95e9}}}
  large = {"devices": 64, "fsdp": 1, "train": {"images_per_step": images, "memory_per_device": {
      "total_bytes": fixed + per_image * images / 64, "temp_bytes": temps(64)}}}
  assert scale_table.fitting_batch(small, large, 80.0) == int((80e9 - fixed) // per_image)
  assert "does not fit" in scale_table.results_table([
      dict(small, config_path="configs/x.py", config={"method": "drifting", "guided": False,
                                                      "feature_encoder": True}),
      dict(large, config_path="configs/x.py")])


def test_tpu_platform_without_libtpu_says_how_to_get_it(monkeypatch):
  monkeypatch.setitem(sys.modules, "libtpu", None)  # `import libtpu` raises, installed or not.
  with pytest.raises(ValueError, match="libtpu==0.0.42"):
    scale.target_devices("tpu", 8)
  with pytest.raises(ValueError, match="--platform"):
    scale.target_devices("gpu", 8)


def test_compiling_a_real_config_needs_no_files():
  """scale.py compiles ImageNet configs on machines without ImageNet, reference statistics or
  weights: the static rules still run, the file checks of training and evaluation do not."""
  from configs import imagenet_drift_ablation  # pylint: disable=import-outside-toplevel
  from mf_jax import config_checks  # pylint: disable=import-outside-toplevel
  config = imagenet_drift_ablation.get_config()
  with pytest.raises(config_checks.ConfigError, match="data.path"):
    config_checks.validate(config)
  config_checks.validate_static(config)
  config.drifting.num_pos = 0
  with pytest.raises(config_checks.ConfigError, match="num_pos"):
    config_checks.validate_static(config)
