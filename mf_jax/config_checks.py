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
  check_unet_and_augment(config)
  o = config.optim
  if o.get("name", "adamw") not in ("adamw", "adam"):
    raise ValueError(f"optim.name={o.name!r}: allowed values are ['adamw', 'adam'].")
  if o.get("name") == "adam" and o.weight_decay:
    raise ValueError(f"optim.weight_decay={o.weight_decay} with optim.name='adam' (no decay term): "
                     "set it to 0 or use 'adamw'.")
  if o.get("warmup_epochs", 0.0) and config.data.get("num_train_examples", 0) <= 0:
    raise ValueError(f"optim.warmup_epochs={o.warmup_epochs} needs data.num_train_examples "
                     "(the training-set size; 50000 for CIFAR-10), or use optim.warmup_steps.")
  if o.get("warmup_epochs", 0.0) and o.warmup_steps:
    raise ValueError("optim.warmup_epochs and optim.warmup_steps are both set: keep one.")
  if int(config.get("ema_every", 1)) < 1:
    raise ValueError(f"ema_every={config.ema_every}: must be an integer >= 1.")
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
  if config.eval.every_steps:
    from eval import evaluators
    evaluators.validate_config(config)
  if workdir is not None:
    check_workdir(workdir)


def check_unet_and_augment(config) -> None:
  """U-Net shape constraints and EDM augmentation, which only the U-Net takes as a condition."""
  from mf_jax import augment  # pylint: disable=g-import-not-at-top
  augment.validate_config(config.augment)
  if config.augment.enabled and (config.model.name != "unet" or config.method != "meanflow"):
    raise ValueError(f"augment.enabled=True needs model.name='unet' and method='meanflow' (the "
                     f"network must see the augmentation labels); got model.name="
                     f"{config.model.name!r}, method={config.method!r}.")
  if config.model.name != "unet":
    return
  u, size = config.model.unet, config.data.image_size
  levels = len(u.channel_mult)
  if size % 2 ** (levels - 1):
    raise ValueError(f"data.image_size={size} must be divisible by 2^(len(model.unet.channel_mult)"
                     f" - 1) = {2 ** (levels - 1)}.")
  if not 0.0 <= u.dropout < 1.0:
    raise ValueError(f"model.unet.dropout={u.dropout}: must lie in [0, 1).")
  if config.method == "meanflow" and config.data.num_classes != 0:
    raise ValueError(f"model.name='unet' is unconditional, but data.num_classes="
                     f"{config.data.num_classes}: set data.num_classes=0.")
