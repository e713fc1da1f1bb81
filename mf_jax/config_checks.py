"""Checks a run config and workdir before anything is written or compiled; errors name the field.

Every field's rule and fix are declared with its default by the module that owns its section
(mf_jax/config_fields.py; the sections are listed in mf_jax/config_schema.py): FIELDS is derived
from those declarations. Here: checks that involve several fields, the device count or files
(CROSS_CHECKS, and per method METHOD_CHECKS), each a function of the config that raises, and
`validate`, which runs everything once per start.
"""
import os
import tempfile
import zipfile

import jax

import input_pipeline
from input_pipeline.config import check_training_files
from mf_jax import (config_fields, config_schema, drifting, drifting_config, generate, meanflow,
                    workdir_signature)
from mf_jax.config_fields import field_names, unknown_field_message  # pylint: disable=unused-import
from mf_jax.errors import ConfigError
from mf_jax.models import config as model_config
from mf_jax.models.dit import parse_variant
from mf_jax.train_state import build_model

MODES = ("train", "sample", "eval")
FIELDS = {name: (f.rule, f.fix) for name, f in config_schema.FIELDS.items()}  # name: (rule, fix)


def _value(config, name):
  for part in name.split("."):
    config = config[part]
  return config


def check_fields(config) -> None:
  """Type and range of every declared field that the config has."""
  config_fields.check(config_schema.SCHEMA, config)


# ---------------------------------------------------------------------------------------------
# Checks across fields, devices and files.

def _batches_fit_devices(config):
  devices = jax.device_count()
  for name in ("train.global_batch_size", "sample.batch_size"):
    value = _value(config, name)
    if value % devices:
      raise ConfigError(f"{name}={value} must be divisible by the number of devices ({devices}); "
                        f"for example {max(devices, value - value % devices)}.")
  if devices % config.sharding.fsdp:
    divisors = [k for k in range(1, devices + 1) if devices % k == 0]
    raise ConfigError(f"sharding.fsdp={config.sharding.fsdp} must divide the device count "
                      f"{devices}: one of {divisors}.")


def _ema_indices(config):
  n = len(config.ema_decays)
  if config.sample.use_ema and config.sample.ema_index >= n:
    raise ConfigError(f"sample.ema_index={config.sample.ema_index}: ema_decays="
                      f"{tuple(config.ema_decays)} has {n} entries, so the index must lie in "
                      f"[0, {n - 1}]; or set sample.use_ema=False." if n else
                      "sample.use_ema=True but ema_decays=() keeps no EMA copy: set "
                      "sample.use_ema=False or add a decay.")


def _sample_guidance(config):
  if config.sample.cfg_scale != 1.0 and config.data.num_classes < 1:
    raise ConfigError(f"sample.cfg_scale={config.sample.cfg_scale} needs a class-conditional "
                      "model; data.num_classes is 0. Use sample.cfg_scale=1.0.")


def _time_conditioning(config):
  """meanflow.time_conditioning needs a MeanFlow network that embeds each named time."""
  choice = config.meanflow.time_conditioning
  if choice == "t,t-r":
    return
  if config.method != "meanflow":
    raise ConfigError(f"meanflow.time_conditioning={choice!r} applies to method='meanflow' only "
                      f"(method={config.method!r} has its own conditions): set it to 't,t-r'.")
  if config.model.name == "unet":
    raise ConfigError(f"meanflow.time_conditioning={choice!r}: model.name='unet' (the official "
                      "CIFAR-10 U-Net) takes exactly (t, t - r); set it to 't,t-r', or use an "
                      "mlp, dit or dit_modern model for this ablation.")


def _model(config):
  _time_conditioning(config)
  model = build_model(config)
  if config.model.name == "dit" and config.method != "mae":
    _, width, heads, _ = parse_variant(config.model.variant)
    width, heads = config.model.hidden_size or width, config.model.num_heads or heads
    if width % heads or width % 4:
      raise ConfigError(f"model.hidden_size={width} must be divisible by model.num_heads={heads} "
                        "and by 4: change one of them (None takes the variant's).")
    model.dims()  # Patch size, dtype and attention names.
  if config.model.name == "dit_modern" and config.method != "mae":
    try:
      model.dims()  # Variant, patch size, head width.
    except ValueError as e:
      raise ConfigError(str(e)) from None


CONVNEXT_HOWTO = ("convert facebook/convnextv2-base-22k-224 (a local Hugging Face folder) with "
                  "`python -m mf_jax.convert.drifting --config=CONFIG --convnext_src=HF_DIR "
                  "--convnext_out=FILE.npz`")


def _convnext_file(config):
  """Training with ConvNeXt features reads its weights (sampling and evaluation do not)."""
  d = config.drifting
  if config.method != "drifting" or not d.use_convnext:
    return
  if not d.convnext_path:
    raise ConfigError("drifting.use_convnext=True but drifting.convnext_path is empty: "
                      f"{CONVNEXT_HOWTO} and set --config.drifting.convnext_path=FILE.npz, or set "
                      "drifting.use_convnext=False.")
  if not os.path.isfile(d.convnext_path):
    raise ConfigError(f"drifting.convnext_path={d.convnext_path!r} is not a file: {CONVNEXT_HOWTO}"
                      ", or set drifting.use_convnext=False.")
  from mf_jax.models import convnext  # pylint: disable=g-import-not-at-top
  from mf_jax.train_state import convnext_model  # pylint: disable=g-import-not-at-top
  try:
    problems = convnext.fit_problems(convnext.file_shapes(d.convnext_path), convnext_model(config))
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    problems = f"not a weights file ({e})"
  if problems:
    raise ConfigError(f"drifting.convnext_path={d.convnext_path!r}: {problems}. Set "
                      "drifting.convnext_depths/convnext_dims to the file's size, or "
                      f"{CONVNEXT_HOWTO}.")


def _vae_file(config):
  d = config.data
  if d.vae_path and not os.path.exists(d.vae_path):
    raise ConfigError(f"data.vae_path={d.vae_path!r} does not exist: give a local diffusers "
                      "AutoencoderKL folder or weights file, or '' to skip decoding.")
  if d.vae_path and not generate.decodes_with_vae(config):
    raise ConfigError(f"data.vae_path={d.vae_path!r} is set, but data.name={d.name!r} is sampled "
                      "in pixel space and nothing is decoded: set data.vae_path to ''.")


def _evaluation(config, mode):
  if config.eval.every_steps or mode == "eval":
    from eval import evaluators  # pylint: disable=g-import-not-at-top
    evaluators.validate_config(config)


def _cifar_recipe(config) -> None:
  """The U-Net, EDM augmentation and the optimizer options of the CIFAR-10 recipe."""
  check_unet_and_augment(config)
  o = config.optim
  if o.name == "adam" and o.weight_decay:
    raise ConfigError(f"optim.weight_decay={o.weight_decay} with optim.name='adam' (no decay term): "
                      "set it to 0 or use 'adamw'.")
  if o.warmup_epochs and config.data.num_train_examples <= 0:
    raise ConfigError(f"optim.warmup_epochs={o.warmup_epochs} needs data.num_train_examples "
                      "(the training-set size; 50000 for CIFAR-10), or use optim.warmup_steps.")
  if o.warmup_epochs and o.warmup_steps:
    raise ConfigError("optim.warmup_epochs and optim.warmup_steps are both set: keep one.")


def check_unet_and_augment(config) -> None:
  """U-Net shape constraints and EDM augmentation, which only the U-Net takes as a condition."""
  if config.augment.enabled and (config.model.name != "unet" or config.method != "meanflow"):
    raise ConfigError(f"augment.enabled=True needs model.name='unet' and method='meanflow' (the "
                     f"network must see the augmentation labels); got model.name="
                     f"{config.model.name!r}, method={config.method!r}.")
  if config.model.name != "unet":
    return
  u, size = config.model.unet, config.data.image_size
  levels = len(u.channel_mult)
  if size % 2 ** (levels - 1):
    raise ConfigError(f"data.image_size={size} must be divisible by 2^(len(model.unet.channel_mult)"
                     f" - 1) = {2 ** (levels - 1)}.")


def _drifting_devices(config):
  try:
    drifting.accumulation_steps(config.drifting, jax.device_count())
  except ValueError as e:
    raise ConfigError(str(e)) from None
  drifting_config.check_config(config)


# The objective's section against the rest of the config, by config.method.
METHOD_CHECKS = {"meanflow": meanflow.check_config, "drifting": _drifting_devices,
                 "mae": model_config.check_mae}


def _method(config):
  METHOD_CHECKS[config.method](config)


# Files last: every cheap check of the config itself comes first.
CROSS_CHECKS = (_batches_fit_devices, _ema_indices, _sample_guidance, _model, _method,
                _cifar_recipe, _vae_file)


# ---------------------------------------------------------------------------------------------
# Workdir.

def check_workdir(workdir: str, mode: str = "train") -> None:
  """--workdir: for training writable (created if missing); other modes need its checkpoints."""
  if not workdir:
    raise ConfigError("--workdir is required: the folder for checkpoints, metrics and samples.")
  if mode != "train":
    ckpts = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(ckpts) or not any(n.isdigit() for n in os.listdir(ckpts)):
      raise FileNotFoundError(f"--mode={mode} found no checkpoint in {ckpts}: train first, or "
                              "point --workdir at a trained run.")
    return
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_probe_"):
      pass
  except OSError as e:
    raise PermissionError(f"--workdir={workdir} is not writable ({e.strerror}): choose a folder you "
                          "can write to, or fix its permissions.") from e


def validate_static(config) -> None:
  """Every field and cross-field rule, no file or workdir: enough to compile a step on abstract
  inputs (benchmarks/scale.py), where data, reference statistics and weights are not needed."""
  check_fields(config)
  input_pipeline.check_name(config.data.name)
  for check in CROSS_CHECKS:
    check(config)


_handed_over = []  # What main.py validated just before handing the run to train.py.


def validate(config, workdir: str = None, mode: str = "train", hand_over: bool = False) -> None:
  """Every field, then cross-field and file checks, then the workdir; writes nothing before all
  config checks pass (a new training workdir is created last). hand_over: the next
  `validate_once` of this same config, workdir and mode (train.py's) is skipped."""
  if mode not in MODES:
    raise ConfigError(f"--mode={mode!r}: allowed values are {list(MODES)}.")
  _handed_over.clear()
  validate_static(config)
  if mode == "train":
    check_training_files(config)
    _convnext_file(config)
  _evaluation(config, mode)
  if workdir is not None:
    if mode != "train":
      check_workdir(workdir, mode)
    workdir_signature.check(config, workdir)  # Reads only.
    if mode == "train":
      check_workdir(workdir, mode)
  if hand_over:
    _handed_over.append(_fingerprint(config, workdir, mode))


def validate_once(config, workdir: str = None, mode: str = "train") -> None:
  """`validate`, unless main.py has just validated this config, workdir and mode (once per start;
  callers of train.py that do not come through main.py are validated here)."""
  if _handed_over == [_fingerprint(config, workdir, mode)]:
    _handed_over.clear()
    return
  validate(config, workdir, mode)


def _fingerprint(config, workdir, mode) -> str:
  return f"{mode} {workdir} {config.to_json_best_effort(sort_keys=True)}"
