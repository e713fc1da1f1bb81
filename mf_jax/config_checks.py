"""Checks a run config and workdir before any compilation, with errors that name the field."""
import os
import tempfile

import jax

import input_pipeline
from mf_jax import drifting, meanflow
from mf_jax.models.dit import parse_variant
from mf_jax.train_state import build_model

METHODS = ("meanflow", "drifting", "mae")


def check_workdir(workdir: str) -> None:
  if not workdir:
    raise ValueError("--workdir is required: the folder for checkpoints, metrics and samples.")
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_probe_"):
      pass
  except OSError as e:
    raise PermissionError(f"--workdir={workdir} is not writable ({e.strerror}): choose a folder you "
                          "can write to, or fix its permissions.") from e


def validate(config, workdir: str = None) -> None:
  if config.method not in METHODS:
    raise ValueError(f"method={config.method!r}: allowed values are {list(METHODS)}.")
  input_pipeline.check_name(config.data.name)
  model = build_model(config)
  if config.model.name == "dit" and config.method != "mae":
    parse_variant(config.model.variant)
    model.dims()  # Patch size, widths, dtype and attention names.
  batch, devices = config.train.global_batch_size, jax.device_count()
  if batch % devices:
    raise ValueError(f"train.global_batch_size={batch} must be divisible by the number of devices "
                     f"({devices}); for example {max(devices, batch - batch % devices)}.")
  if devices % config.sharding.fsdp:
    raise ValueError(f"sharding.fsdp={config.sharding.fsdp} must divide the device count {devices}.")
  for d in config.ema_decays:
    if not 0.0 <= d < 1.0:
      raise ValueError(f"ema_decays={tuple(config.ema_decays)}: each decay must lie in [0, 1).")
  if config.method == "meanflow":
    meanflow.validate_config(config.meanflow)
    if config.meanflow.num_classes != config.data.num_classes:
      raise ValueError(f"meanflow.num_classes={config.meanflow.num_classes} differs from "
                       f"data.num_classes={config.data.num_classes}; leave it linked to data.")
  if config.method == "drifting":
    drifting.validate_config(config.drifting)
    d, classes = config.drifting, max(config.data.num_classes, 1)
    if not 1 <= d.classes_per_step <= classes:
      raise ValueError(f"drifting.classes_per_step={d.classes_per_step} must lie in [1, {classes}] "
                       f"(data.num_classes={config.data.num_classes}).")
    if not 1 <= d.num_pos <= d.queue_len:
      raise ValueError(f"drifting.num_pos={d.num_pos} must lie in [1, drifting.queue_len="
                       f"{d.queue_len}].")
    if d.uncond_queue_len < 0 or d.fill_max_examples < 1:
      raise ValueError(f"drifting.uncond_queue_len={d.uncond_queue_len} must be >= 0 (0: guidance "
                       f"negatives from the step's other classes) and drifting.fill_max_examples="
                       f"{d.fill_max_examples} >= 1.")
  if config.eval.every_steps:
    from eval import evaluators
    evaluators.validate_config(config)
  if workdir is not None:
    check_workdir(workdir)
