"""Checks a run config and workdir before anything is written or compiled; errors name the field.

Every field's rule and fix are declared with its default by the module that owns its section
(mf_jax/config_fields.py; the sections are listed in mf_jax/config_schema.py): FIELDS is derived
from those declarations. Here: checks that involve several fields, the device count or files
(CROSS_CHECKS, and per method METHOD_CHECKS), each a function of the config that raises, and
`validate`, which runs everything once per start.
"""
import os
import re
import tempfile

import jax

import input_pipeline
from input_pipeline.config import check_latent_statistics, check_training_files
from mf_jax import config_fields, config_schema, generate, workdir_signature
from mf_jax import ema as ema_lib
from mf_jax import train_state as ts
from mf_jax.config_fields import field_names, unknown_field_message  # pylint: disable=unused-import
from mf_jax.errors import ConfigError
from mf_jax.models.dit import DiT, parse_variant
from mf_jax.models.dit_modern import ModernDiT
from mf_jax.models.unet import SongUNet

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


def _ema_copies(config):
  """EMA copies are defined one way, and sample.ema_name / ema_index pick one that exists."""
  if ema_lib.uses_half_lives(config) and tuple(config.ema_decays):
    raise ConfigError(f"ema_half_lives_kimg={tuple(config.ema_half_lives_kimg)} and ema_decays="
                      f"{tuple(config.ema_decays)} both define EMA copies. Fix: set "
                      "--config.ema_decays=() to keep one copy per half-life, or "
                      "--config.ema_half_lives_kimg=() to keep the constant decays.")
  n, copies = ema_lib.num_emas(config), ema_lib.definition(config)
  if not config.sample.use_ema:
    return
  index = ema_lib.ema_index(config, "sample")  # An unknown sample.ema_name raises here.
  if index >= n:
    raise ConfigError(f"sample.ema_index={config.sample.ema_index}: {copies} has {n} entries, so "
                      f"the index must lie in [0, {n - 1}]; or set sample.use_ema=False." if n else
                      f"sample.use_ema=True but {copies} keeps no EMA copy: set "
                      "sample.use_ema=False or add a decay.")


def _muon_exclude(config):
  """optim.muon_exclude: regular expressions, for the muon optimizer only."""
  o = config.optim
  if tuple(o.muon_exclude) and o.name != "muon":
    raise ConfigError(f"optim.muon_exclude={tuple(o.muon_exclude)} applies to optim.name='muon' "
                      f"only (optim.name={o.name!r}). Fix: set --config.optim.muon_exclude=().")
  for pattern in o.muon_exclude:
    try:
      re.compile(pattern)
    except re.error as e:
      raise ConfigError(f"optim.muon_exclude: {pattern!r} is not a regular expression ({e}). "
                        "Fix: set --config.optim.muon_exclude to valid expressions, e.g. "
                        "('_tokens$',).") from None


def _sample_guidance(config):
  if config.sample.cfg_scale != 1.0 and config.data.num_classes < 1:
    raise ConfigError(f"sample.cfg_scale={config.sample.cfg_scale} needs a class-conditional "
                      "model; data.num_classes is 0. Use sample.cfg_scale=1.0.")


def _time_conditioning(config):
  """meanflow.time_conditioning needs a method that reads the meanflow section."""
  choice = config.meanflow.time_conditioning
  if choice != "t,t-r" and "meanflow" not in ts.objective(config).reads_sections:
    raise ConfigError(f"meanflow.time_conditioning={choice!r} applies to method='meanflow' only "
                      f"(method={config.method!r} has its own conditions): set it to 't,t-r'.")


def _model(config):
  """The network's own shape rules (the generator of a MeanFlow or Drifting run)."""
  model = ts.build_model(config)
  if isinstance(model, DiT):
    _, width, heads, _ = parse_variant(config.model.variant)
    width, heads = config.model.hidden_size or width, config.model.num_heads or heads
    if width % heads or width % 4:
      raise ConfigError(f"model.hidden_size={width} must be divisible by model.num_heads={heads} "
                        "and by 4: change one of them (None takes the variant's).")
    model.dims()  # Patch size, dtype and attention names.
  if isinstance(model, ModernDiT):
    try:
      model.dims()  # Variant, patch size, head width.
    except ValueError as e:
      raise ConfigError(str(e)) from None


def _objective(config):
  """The method's own rules (Objective.validate, check_devices), and guidance intervals only for
  a method that conditions on one."""
  objective = ts.objective(config)
  objective.validate(config)
  objective.check_devices(config, jax.device_count())
  intervals = {"sample.guidance_interval": tuple(config.sample.guidance_interval),
               "eval.guidance_intervals": tuple(config.eval.guidance_intervals)}
  for name, value in intervals.items():
    if value and not objective.samples_with_interval:
      raise ConfigError(f"{name}={value}: method={config.method!r} samples without a guidance "
                        f"interval (iMF conditions on one): set --config.{name}=().")


def _frozen_network_files(config):
  """Training reads the weights files of the method's frozen networks: each must fit its module."""
  import importlib  # pylint: disable=g-import-not-at-top
  for frozen in ts.objective(config).frozen_networks(config):
    if not frozen.path:
      continue
    fmt = importlib.import_module(f"mf_jax.convert.formats.{frozen.file_format}")
    problems = fmt.file_problems(frozen.path, frozen.module)
    if problems:
      raise ConfigError(f"{frozen.field}={frozen.path!r}: {problems}. Fix: {frozen.fix}.")


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
  if config.augment.enabled and (config.model.name != "unet" or
                                 not ts.objective(config).takes_augment_labels):
    raise ConfigError(f"augment.enabled=True needs model.name='unet' and method='meanflow' (the "
                     f"network must see the augmentation labels); got model.name="
                     f"{config.model.name!r}, method={config.method!r}.")
  if not isinstance(ts.build_model(config), SongUNet):
    return
  u, size = config.model.unet, config.data.image_size
  levels = len(u.channel_mult)
  if size % 2 ** (levels - 1):
    raise ConfigError(f"data.image_size={size} must be divisible by 2^(len(model.unet.channel_mult)"
                     f" - 1) = {2 ** (levels - 1)}.")


# Files last: every cheap check of the config itself comes first.
CROSS_CHECKS = (_batches_fit_devices, _ema_copies, _muon_exclude, _sample_guidance,
                _time_conditioning, _model, _objective, _cifar_recipe, _vae_file,
                check_latent_statistics)


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
    ts.objective(config).validate_files(config)
    _frozen_network_files(config)
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
