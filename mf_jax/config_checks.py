"""Checks a run config and workdir before anything is written or compiled; errors name the field.

Every field a user can set has one row in FIELDS: (rule, fix). A rule maps the value to None (good)
or to what is wrong with it and the allowed values. A field added to configs/base.py gets a row
here (tests/test_bad_input.py fails and lists it otherwise). Checks that involve several fields,
the device count or files are in CROSS_CHECKS, each a function of the config that raises.
"""
import difflib
import glob
import numbers
import os
import tempfile
import zipfile
from typing import Callable, Optional

import jax

import input_pipeline
from mf_jax import class_queues, drifting, generate, meanflow, workdir_signature
from mf_jax.models.attention import MATMUL_PRECISIONS
from mf_jax.models.dit import ATTENTION_IMPLS, parse_variant
from mf_jax.train_state import DTYPES, build_model

METHODS = ("meanflow", "drifting", "mae")
PIXEL_DATA = ("imagenet_pixels", "cifar10")  # Samples x = v / 127.5 - 1 of 8-bit levels v.
MODES = ("train", "sample", "eval")


class ConfigError(ValueError):
  """A bad config field or workdir; main.py prints it in one line and exits with status 2."""


# ---------------------------------------------------------------------------------------------
# Rules: value -> None, or what is wrong ("must be ...", with the allowed values).

Rule = Callable[[object], Optional[str]]


def _is_int(v):
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def integer(lo=None, hi=None) -> Rule:
  def rule(v):
    if not _is_int(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
      bounds = " and ".join(s for s in (lo is not None and f">= {lo}", hi is not None and f"<= {hi}")
                            if s)
      return f"must be an integer{' ' + bounds if bounds else ''}"
    return None
  return rule


def _span(lo, hi, lo_open, hi_open) -> str:
  if lo is not None and hi is not None:
    return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
  if lo is not None:
    return f"{'>' if lo_open else '>='} {lo}"
  return "" if hi is None else f"{'<' if hi_open else '<='} {hi}"


def _in_range(v, lo, hi, lo_open, hi_open) -> bool:
  if not isinstance(v, numbers.Real) or isinstance(v, bool) or v != v:  # v != v: NaN.
    return False
  return ((lo is None or (v > lo if lo_open else v >= lo))
          and (hi is None or (v < hi if hi_open else v <= hi)))


def number(lo=None, hi=None, lo_open=False, hi_open=False) -> Rule:
  message = f"must be a number {_span(lo, hi, lo_open, hi_open)}".strip()
  return lambda v: None if _in_range(v, lo, hi, lo_open, hi_open) else message


def choice(*options) -> Rule:
  return lambda v: None if v in options else f"allowed values are {list(options)}"


def boolean() -> Rule:
  return lambda v: None if isinstance(v, bool) else "must be True or False"


def text() -> Rule:
  return lambda v: None if isinstance(v, str) else "must be a string"


def optional(rule: Rule) -> Rule:
  return lambda v: None if v is None else rule(v)


def int_tuple(lo=1, allow_empty=False) -> Rule:
  def rule(v):
    if isinstance(v, (tuple, list)) and (v or allow_empty) and all(_is_int(x) and x >= lo for x in v):
      return None
    return f"must be a {'' if allow_empty else 'non-empty '}tuple of integers >= {lo}"
  return rule


def number_tuple(lo=None, hi=None, lo_open=False, hi_open=False) -> Rule:
  message = f"must be a tuple of numbers, each {_span(lo, hi, lo_open, hi_open)}"
  return lambda v: (None if isinstance(v, (tuple, list)) and all(
      _in_range(x, lo, hi, lo_open, hi_open) for x in v) else message)


POSITIVE = integer(lo=1)
NON_NEGATIVE = integer(lo=0)
FRACTION = number(0.0, 1.0)

FIELDS = {
    "seed": (integer(), "any integer, e.g. 0"),
    "method": (choice(*METHODS), "meanflow (default), drifting, or mae (drifting's encoder)"),
    "data.name": (choice(*input_pipeline.DATASETS), "a data set this codebase reads"),
    "data.path": (text(), "the folder of prepared records (latents, pixels) or the TFDS data_dir "
                          "(cifar10)"),
    "data.image_size": (POSITIVE, "the stored image/latent side, e.g. 32 for ImageNet latents"),
    "data.channels": (POSITIVE, "4 for SD-VAE latents, 3 for RGB, 1 for digits"),
    "data.num_classes": (NON_NEGATIVE, "0 for unconditional, else the label count"),
    "data.latent_scale": (number(0.0, lo_open=True), "0.18215 for SD-VAE latents"),
    "data.vae_path": (text(), "a local diffusers AutoencoderKL folder, or '' (no decoding)"),
    "data.random_flip": (boolean(), "True or False"),
    "data.random_crop_min_area": (FRACTION, "0.0 (no crop), or 0.2 (the release's pixel configs)"),
    "model.name": (choice("dit", "dit_modern", "mlp", "unet"),
                   "dit for images, dit_modern for the Drifting release's generator, mlp for small "
                   "vectors, unet for CIFAR-10 (unconditional)"),
    "model.variant": (text(), "NAME/PATCH, e.g. 'B/2'"),
    "model.depth": (optional(POSITIVE), "None (the variant's) or a block count"),
    "model.hidden_size": (optional(POSITIVE), "None (the variant's) or a width divisible by "
                                              "num_heads and 4"),
    "model.num_heads": (optional(POSITIVE), "None (the variant's) or a divisor of hidden_size"),
    "model.compute_dtype": (choice(*DTYPES), "float32, or bfloat16 for bf16 matmuls"),
    "model.attention_impl": (choice(*ATTENTION_IMPLS), "einsum works everywhere; cudnn needs a GPU "
                             "and compute_dtype='bfloat16'"),
    "model.matmul_precision": (choice(*MATMUL_PRECISIONS), "default, or bfloat16 for bf16 matmul "
                               "operands with float32 storage"),
    "model.remat": (boolean(), "True trades compute for memory"),
    "model.mlp_widths": (int_tuple(), "hidden widths, e.g. (512, 512, 512, 512)"),
    "model.cls_tokens": (NON_NEGATIVE, "16 (the Drifting release)"),
    "model.noise_classes": (NON_NEGATIVE, "64 (the Drifting release), or 0 for no noise labels"),
    "model.noise_coords": (POSITIVE, "32 (the Drifting release)"),
    "model.attn_fp32": (boolean(), "True (float32 attention), False for attention in "
                                   "model.compute_dtype (the release's latent SOTA configs)"),
    "model.unet.channels": (POSITIVE, "128 (official CIFAR-10 U-Net)"),
    "model.unet.channel_mult": (int_tuple(), "(2, 2, 2)"),
    "model.unet.num_blocks": (POSITIVE, "4"),
    "model.unet.attn_resolutions": (int_tuple(allow_empty=True), "(16,)"),
    "model.unet.dropout": (number(0.0, 1.0, hi_open=True), "0.2 (official)"),
    "data.num_train_examples": (NON_NEGATIVE, "0, or 50000 for CIFAR-10 with optim.warmup_epochs"),
    "meanflow.num_classes": (NON_NEGATIVE, "leave it linked to data.num_classes"),
    "meanflow.time_sampler": (choice("logit_normal", "uniform"), "logit_normal (paper)"),
    "meanflow.time_mu": (number(), "-0.4 (paper)"),
    "meanflow.time_sigma": (number(0.0, lo_open=True), "1.0 (paper)"),
    "meanflow.time_mu_r": (optional(number()), "None (as time_mu), or e.g. -4.0 (CIFAR-10 v1)"),
    "meanflow.time_sigma_r": (optional(number(0.0, lo_open=True)), "None (as time_sigma), or 1.6"),
    "meanflow.time_pairing": (choice(*meanflow.TIME_PAIRINGS), "sort (paper), or min_r (v1)"),
    "meanflow.r_neq_t_ratio": (FRACTION, "0.25 (paper); 0 is flow matching"),
    "meanflow.adaptive_p": (number(0.0), "1.0 (paper); 0 is plain L2"),
    "meanflow.adaptive_c": (number(0.0, lo_open=True), "1e-3 (paper)"),
    "meanflow.guidance_omega": (number(0.0, lo_open=True), "1.0 (no guidance) or e.g. 2.0"),
    "meanflow.guidance_kappa": (number(hi=1.0, hi_open=True), "0.0, or e.g. 0.5 with omega"),
    "meanflow.guidance_t_min": (FRACTION, "0.0"),
    "meanflow.guidance_t_max": (FRACTION, "1.0, or e.g. 0.75 (XL/2)"),
    "meanflow.class_dropout": (number(0.0, 1.0, hi_open=True), "0.1 (paper)"),
    "meanflow.class_dropout_rows": (choice(*meanflow.DROPOUT_ROWS),
                                    "independent, or r_eq_t_first (official batch layout)"),
    "meanflow.jvp_tangent": (choice(*meanflow.JVP_TANGENTS),
                             "v,0,1 (paper); the others are Table 1b ablations"),
    "meanflow.time_conditioning": (choice(*meanflow.TIME_CONDITIONINGS),
                                   "t,t-r (paper); the others are Table 1c ablations"),
    "drifting.temperatures": (number_tuple(0.0, lo_open=True), "e.g. (0.02, 0.05, 0.2)"),
    "drifting.normalize_distances": (boolean(), "True (paper)"),
    "drifting.normalize_drift": (boolean(), "True (paper)"),
    "drifting.num_neg": (integer(lo=2), "64 (paper)"),
    "drifting.num_unc": (NON_NEGATIVE, "16 (paper); 0 turns guidance off"),
    "drifting.alpha_min": (number(1.0), "1.0"),
    "drifting.alpha_max": (number(1.0), "4.0"),
    "drifting.alpha_power": (number(0.0), "3.0 (released ablation); 0 = uniform"),
    "drifting.no_guidance_frac": (FRACTION, "0.0, or 0.5 (released SOTA-L)"),
    "drifting.class_chunk": (NON_NEGATIVE, "0 (all classes at once) or a divisor of "
                                           "drifting.classes_per_step"),
    "drifting.accum_classes_per_device": (NON_NEGATIVE, "0 (one pass), or a divisor of the "
                                                        "classes each device holds, e.g. 4"),
    "drifting.affinity_floor": (number(0.0), "0.0, or 1e-3 (released ImageNet configs)"),
    "drifting.noise_shape": (int_tuple(allow_empty=True), "() for the sample shape"),
    "drifting.classes_per_step": (POSITIVE, "at most data.num_classes, e.g. 64"),
    "drifting.num_pos": (POSITIVE, "at most drifting.queue_len, e.g. 64"),
    "drifting.queue_len": (POSITIVE, "e.g. 128"),
    "drifting.bank_dtype": (choice(*class_queues.STORAGE_DTYPES),
                            "float32, or uint8 for 8-bit pixel data (imagenet_pixels, cifar10)"),
    "drifting.feature_encoder_workdir": (text(), "the workdir of a method='mae' run, or ''"),
    "drifting.use_convnext": (boolean(), "False, or True for ConvNeXt-V2 features (pixel data)"),
    "drifting.convnext_path": (text(), "the .npz of `python -m mf_jax.convert.drifting "
                                       "--convnext_out=...`, or ''"),
    "drifting.convnext_depths": (int_tuple(), "(3, 3, 27, 3) (ConvNeXt-V2-Base)"),
    "drifting.convnext_dims": (int_tuple(), "(128, 256, 512, 1024) (ConvNeXt-V2-Base)"),
    "drifting.convnext_compute_dtype": (choice("float32", "bfloat16"),
                                        "float32 (release), or bfloat16"),
    "drifting.uncond_queue_len": (NON_NEGATIVE, "1000 (released); 0 = guidance negatives from the "
                                                "step's other classes"),
    "drifting.fill_max_examples": (POSITIVE, "2000000 (more than one ImageNet epoch)"),
    "mae.arch": (choice("resnet", "release"), "resnet (this codebase's), or release (MAE-256/640)"),
    "mae.layers": (int_tuple(), "(3, 4, 6, 3) (release)"),
    "mae.input_patch_size": (POSITIVE, "1 for latents, 8 for 256x256 pixels (release)"),
    "mae.every_k_block": (NON_NEGATIVE, "2 (release); 0 = stage outputs only"),
    "mae.widths": (int_tuple(), "e.g. (128, 256, 512, 512)"),
    "mae.blocks_per_stage": (POSITIVE, "e.g. 2"),
    "mae.groups": (POSITIVE, "a divisor of every mae.widths entry, e.g. 32"),
    "mae.decoder_width": (POSITIVE, "e.g. 256"),
    "mae.mask_ratio": (number(0.0, 1.0, hi_open=True), "0.75"),
    "mae.patch_size": (POSITIVE, "a divisor of data.image_size, e.g. 2"),
    "mae.compute_dtype": (choice("float32", "bfloat16"), "float32, or bfloat16 for bf16 convolutions"),
    "mae.remat": (boolean(), "True trades compute for memory"),
    "optim.name": (choice("adamw", "adam"), "adamw, or adam (no weight decay term)"),
    "optim.warmup_epochs": (number(0.0), "0.0, or e.g. 200 (CIFAR-10; needs data.num_train_examples)"),
    "ema_every": (POSITIVE, "1, or e.g. 16 (decay^16 every 16 steps)"),
    "augment.enabled": (boolean(), "False; True for the CIFAR-10 U-Net recipe"),
    "augment.p": (number(0.0), "0.12 (EDM CIFAR-10)"),
    "augment.xflip": (number(0.0), "1e8 (every image may flip)"),
    "augment.scale": (number(0.0), "1.0"),
    "augment.aniso": (number(0.0), "1.0"),
    "augment.translate": (number(0.0), "1.0"),
    "augment.scale_std": (number(0.0), "0.2"),
    "augment.aniso_std": (number(0.0), "0.2"),
    "augment.aniso_rotate_prob": (FRACTION, "0.5"),
    "augment.translate_std": (number(0.0), "0.125"),
    "optim.learning_rate": (number(0.0, lo_open=True), "1e-4 (MeanFlow ImageNet)"),
    "optim.b1": (number(0.0, 1.0, hi_open=True), "0.9"),
    "optim.b2": (number(0.0, 1.0, hi_open=True), "0.95"),
    "optim.weight_decay": (number(0.0), "0.0"),
    "optim.warmup_steps": (NON_NEGATIVE, "0"),
    "optim.schedule": (choice("constant", "cosine"), "constant"),
    "optim.grad_clip": (number(0.0), "0 (off) or e.g. 2.0"),
    "ema_decays": (number_tuple(0.0, 1.0, hi_open=True), "e.g. (0.9999,)"),
    "train.global_batch_size": (POSITIVE, "a multiple of the device count, e.g. 256"),
    "train.num_steps": (POSITIVE, "the step to train to, e.g. 1200000"),
    "train.log_every": (POSITIVE, "e.g. 100"),
    "train.checkpoint_every": (POSITIVE, "e.g. 5000"),
    "train.keep_checkpoints": (POSITIVE, "e.g. 3"),
    "train.sample_every": (NON_NEGATIVE, "0 (off) or e.g. 10000"),
    "train.profile": (boolean(), "False"),
    "sharding.fsdp": (POSITIVE, "1 (data parallel) or a divisor of the device count"),
    "sample.num_samples": (POSITIVE, "e.g. 64, or 50000 for FID"),
    "sample.num_steps": (POSITIVE, "1 (1-NFE) or 2"),
    "sample.sampler": (choice("meanflow", "euler"),
                       "meanflow, or euler (flow-matching Euler with u(z, t, t))"),
    "sample.batch_size": (POSITIVE, "a multiple of the device count"),
    "sample.use_ema": (boolean(), "True"),
    "sample.ema_index": (NON_NEGATIVE, "an index into ema_decays, e.g. 0"),
    "sample.seed": (integer(), "any integer"),
    "sample.cfg_scale": (number(0.0, lo_open=True), "1.0 (none)"),
    "eval.every_steps": (NON_NEGATIVE, "0 (off) or a step count"),
    "eval.num_samples": (integer(lo=2), "50000 (FID-50K)"),
    "eval.batch_size": (POSITIVE, "a multiple of the device count, e.g. 256"),
    "eval.num_steps": (int_tuple(), "e.g. (1, 2)"),
    "eval.cfg_scale": (number(0.0, lo_open=True), "1.0 (none)"),
    "eval.use_ema": (boolean(), "True"),
    "eval.ema_index": (NON_NEGATIVE, "an index into ema_decays, e.g. 0"),
    "eval.features": (text(), "inception or pixels"),
    "eval.inception_path": (text(), "the FID Inception .pth, or '' for the default path"),
    "eval.ref_stats": (text(), "an .npz with mu/sigma"),
    "eval.seed": (integer(), "any integer"),
    "eval.cfg_scales": (number_tuple(0.0, lo_open=True), "() (use eval.cfg_scale), or e.g. "
                                                        "(1.0, 1.5, 2.0) to report the best"),
    "eval.label_sampling": (choice(*generate.LABEL_SAMPLING), "cycle, or uniform (official)"),
    "eval.uint8_rounding": (choice(*generate.UINT8_ROUNDING), "half_even, or half_up (official)"),
}


def field_names(config, prefix="") -> list:
  """Dotted names of every leaf field of a config (sections recursed)."""
  names = []
  for key, value in config.items():
    if hasattr(value, "items"):
      names += field_names(value, f"{prefix}{key}.")
    else:
      names.append(prefix + key)
  return names


def _value(config, name):
  for part in name.split("."):
    config = config[part]
  return config


def check_fields(config) -> None:
  """Type and range of every field in FIELDS that the config has."""
  for name in field_names(config):
    if name not in FIELDS:
      continue
    rule, fix = FIELDS[name]
    value = _value(config, name)
    problem = rule(value)
    if problem:
      raise ConfigError(f"{name}={value!r}: {problem}. Fix: set --config.{name} to {fix}.")


def unknown_field_message(config, dotted: str) -> Optional[str]:
  """For an override path that does not exist: names the section and the closest valid names."""
  node, parts = config, dotted.split(".")
  for i, part in enumerate(parts):
    section = ".".join(parts[:i]) or "the top level"
    if not hasattr(node, "keys"):
      return (f"--config.{dotted}: {section} is a field ({node!r}), not a section with "
              f"sub-fields.")
    if part not in node.keys():
      valid = sorted(node.keys())
      close = difflib.get_close_matches(part, valid, n=3, cutoff=0.5)
      hint = f"did you mean {' or '.join(close)}? " if close else ""
      return (f"--config.{dotted}: {section} has no field {part!r}; {hint}"
              f"valid names in {section}: {', '.join(valid)}.")
    node = node[part]
  return None


# ---------------------------------------------------------------------------------------------
# Checks across fields, devices and files.

def _batches_fit_devices(config):
  devices = jax.device_count()
  for name in ("train.global_batch_size", "sample.batch_size"):
    value = _value(config, name)
    if value % devices:
      raise ConfigError(f"{name}={value} must be divisible by the number of devices ({devices}); "
                        f"for example {max(devices, value - value % devices)}.")
  if config.method == "drifting":
    try:
      drifting.accumulation_steps(config.drifting, devices)
    except ValueError as e:
      raise ConfigError(str(e)) from None
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


def _time_conditioning(config):
  """meanflow.time_conditioning needs a MeanFlow network that embeds each named time."""
  choice = config.meanflow.get("time_conditioning", "t,t-r")
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
  if config.mae.arch == "release":
    if config.method == "mae" or config.drifting.feature_encoder_workdir:
      _release_mae(config)
  elif config.method == "mae":
    if config.data.image_size % config.mae.patch_size:
      raise ConfigError(f"mae.patch_size={config.mae.patch_size} must divide data.image_size="
                        f"{config.data.image_size}.")
    for width in config.mae.widths:
      if width % config.mae.groups:
        raise ConfigError(f"mae.groups={config.mae.groups} must divide every mae.widths entry "
                          f"{tuple(config.mae.widths)}.")


def _release_mae(config):
  e, size = config.mae, config.data.image_size
  if len(e.widths) != 4 or len(e.layers) != 4:
    raise ConfigError(f"mae.widths={tuple(e.widths)} and mae.layers={tuple(e.layers)} need 4 "
                      "entries each for mae.arch='release', e.g. (256, 512, 1024, 2048) and "
                      "(3, 4, 6, 3).")
  cell = e.patch_size * e.input_patch_size
  if size % cell:
    raise ConfigError(f"mae.patch_size={e.patch_size} x mae.input_patch_size={e.input_patch_size}"
                      f" = {cell} must divide data.image_size={size}.")


def _objective(config):
  if config.method == "meanflow":
    meanflow.validate_config(config.meanflow)
    if config.meanflow.num_classes != config.data.num_classes:
      raise ConfigError(f"meanflow.num_classes={config.meanflow.num_classes} differs from "
                        f"data.num_classes={config.data.num_classes}; leave it linked to data.")
  if config.method == "drifting":
    drifting.validate_config(config.drifting)
    d, classes = config.drifting, max(config.data.num_classes, 1)
    if not 1 <= d.classes_per_step <= classes:
      raise ConfigError(f"drifting.classes_per_step={d.classes_per_step} must lie in [1, {classes}] "
                        f"(data.num_classes={config.data.num_classes}).")
    if not 1 <= d.num_pos <= d.queue_len:
      raise ConfigError(f"drifting.num_pos={d.num_pos} must lie in [1, drifting.queue_len="
                        f"{d.queue_len}].")
    if d.bank_dtype == "uint8" and config.data.name not in PIXEL_DATA:
      raise ConfigError(f"drifting.bank_dtype='uint8' stores 8-bit pixels, which data.name="
                        f"{config.data.name!r} does not give (only {' and '.join(PIXEL_DATA)} do): "
                        "set drifting.bank_dtype='float32'.")
    enc = d.feature_encoder_workdir
    if enc and not os.path.isdir(os.path.join(enc, "checkpoints")):
      raise ConfigError(f"drifting.feature_encoder_workdir={enc!r} holds no checkpoints/ folder: "
                        "pretrain the encoder with method='mae' into it, or set it to ''.")
    if d.use_convnext:
      _convnext_static(config)


def _convnext_static(config):
  """ConvNeXt features see RGB pixels in [-1, 1]; four stages."""
  d = config.drifting
  if config.data.channels != 3 or config.data.name == "imagenet_latents":
    raise ConfigError(f"drifting.use_convnext=True needs RGB pixel samples, but data.name="
                      f"{config.data.name!r} with data.channels={config.data.channels}: set "
                      "drifting.use_convnext=False (latent models use the MAE alone).")
  if len(d.convnext_depths) != 4 or len(d.convnext_dims) != 4:
    raise ConfigError(f"drifting.convnext_depths={tuple(d.convnext_depths)} and "
                      f"drifting.convnext_dims={tuple(d.convnext_dims)} need 4 entries each, e.g. "
                      "(3, 3, 27, 3) and (128, 256, 512, 1024) (ConvNeXt-V2-Base).")


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


def _training_data(config):
  """The training set's files; sampling and evaluation read none (train mode only)."""
  d = config.data
  if d.name not in ("imagenet_latents", "imagenet_pixels", "cifar10"):
    return
  what = {"imagenet_latents": "the --out folder of `python -m input_pipeline.prepare_imagenet`",
          "imagenet_pixels": "the --out folder of `python -m input_pipeline.prepare_imagenet "
                             "--pixels`"}.get(d.name, "a TFDS data_dir holding cifar10")
  if not d.path:
    raise ConfigError(f"data.path is empty, but data.name={d.name!r} reads files: set "
                      f"--config.data.path to {what}.")
  if d.name == "cifar10":
    if not os.path.isdir(d.path):
      raise ConfigError(f"data.path={d.path!r} is not a folder: set it to {what}.")
    return
  if os.path.isdir(d.path):
    manifest = os.path.join(d.path, "manifest.json")
  elif d.path.endswith(".json") or not glob.has_magic(d.path):
    manifest = d.path
  else:
    manifest = os.path.join(os.path.dirname(d.path), "manifest.json")
  if not os.path.exists(os.path.dirname(manifest) or "."):
    raise ConfigError(f"data.path={d.path!r}: folder {os.path.dirname(manifest)!r} does not exist; "
                      f"set it to {what}.")
  if not os.path.isfile(manifest):
    raise ConfigError(f"data.path={d.path!r}: no manifest {manifest!r} (written last by a finished "
                      f"preparation); set it to {what}, or finish the preparation.")
  if d.name == "imagenet_pixels":  # The images' shape is the model's: a mismatch fails compiling.
    from input_pipeline import records  # pylint: disable=g-import-not-at-top
    m = records.read_manifest(manifest)
    if m["layout"].arrays != records.PIXEL_FIELDS:
      raise ConfigError(f"data.path={d.path!r} holds {m['format']} records: data.name="
                        "'imagenet_pixels' reads those of prepare_imagenet --pixels.")
    want = [d.image_size, d.image_size, d.channels]
    if list(m["layout"].shape) != want:
      raise ConfigError(f"data.image_size={d.image_size}, data.channels={d.channels} (images "
                        f"{want}), but data.path={d.path!r} holds {list(m['layout'].shape)}: set "
                        "them to the records' shape, or prepare with that --image_size.")


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
  from mf_jax import augment  # pylint: disable=g-import-not-at-top
  augment.validate_config(config.augment)
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
  if not 0.0 <= u.dropout < 1.0:
    raise ConfigError(f"model.unet.dropout={u.dropout}: must lie in [0, 1).")
  if config.method == "meanflow" and config.data.num_classes != 0:
    raise ConfigError(f"model.name='unet' is unconditional, but data.num_classes="
                     f"{config.data.num_classes}: set data.num_classes=0.")


# Files last: every cheap check of the config itself comes first.
CROSS_CHECKS = (_batches_fit_devices, _ema_indices, _model, _objective, _cifar_recipe,
                _vae_file)


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


def validate(config, workdir: str = None, mode: str = "train") -> None:
  """Every field, then cross-field and file checks, then the workdir; writes nothing before all
  config checks pass (a new training workdir is created last)."""
  if mode not in MODES:
    raise ConfigError(f"--mode={mode!r}: allowed values are {list(MODES)}.")
  validate_static(config)
  if mode == "train":
    _training_data(config)
    _convnext_file(config)
  _evaluation(config, mode)
  if workdir is not None:
    if mode != "train":
      check_workdir(workdir, mode)
    workdir_signature.check(config, workdir)  # Reads only.
    if mode == "train":
      check_workdir(workdir, mode)
