"""The `drifting` config section, declared once (mf_jax/config_fields.py): the loss's fields, then
how the trainer feeds it (class queues, frozen feature networks); and the checks across fields."""
import os

import ml_collections

from mf_jax import config_fields
from mf_jax.class_queues import STORAGE_DTYPES
from mf_jax.config_fields import (FRACTION, NON_NEGATIVE, POSITIVE, Field, boolean, choice,
                                  int_tuple, integer, number, number_tuple, text)
from mf_jax.errors import ConfigError
from mf_jax.models.config import check_release_mae

PIXEL_DATA = ("imagenet_pixels", "cifar10")  # Samples x = v / 127.5 - 1 of 8-bit levels v.

# The `drifting` config section: the loss's fields, then how the trainer feeds it (class queues,
# frozen feature networks). Defaults: the released ablation recipe.
CONFIG = dict(
    temperatures=Field((0.02, 0.05, 0.2), number_tuple(0.0, lo_open=True),
                       "e.g. (0.02, 0.05, 0.2)"),
    # Distances in units of their step mean D; features divided by s.
    normalize_distances=Field(True, boolean(), "True (paper)"),
    # Each tau's field rescaled to unit RMS (over the step) before summing.
    normalize_drift=Field(True, boolean(), "True (paper)"),
    # Generated samples per class (N_neg); they are also the negatives. Each one's own pair is
    # masked, so one sample would have no negatives.
    num_neg=Field(64, integer(lo=2), "64 (paper)"),
    # Guidance negatives per class (N_unc); 0 turns guidance off.
    num_unc=Field(16, NON_NEGATIVE, "16 (paper); 0 turns guidance off"),
    alpha_min=Field(1.0, number(1.0), "1.0"),  # Guidance scale alpha, drawn per class.
    alpha_max=Field(4.0, number(1.0), "4.0"),
    # p(alpha) ~ alpha^-alpha_power on [alpha_min, alpha_max]; 0 = uniform.
    alpha_power=Field(3.0, number(0.0), "3.0 (released ablation); 0 = uniform"),
    # Fraction of classes drawn with alpha = 1 instead.
    no_guidance_frac=Field(0.0, FRACTION, "0.0, or 0.5 (released SOTA-L)"),
    # Generator input shape per sample; () means the sample shape.
    noise_shape=Field((), int_tuple(allow_empty=True), "() for the sample shape"),
    # Classes per pass of the kernel computation; 0 = all at once.
    class_chunk=Field(0, NON_NEGATIVE, "0 (all classes at once) or a divisor of "
                                       "drifting.classes_per_step"),
    # Classes per device per pass of the generator and the encoder: the step's gradient is then
    # accumulated over classes_per_step / (this x devices) passes, exactly (see
    # drifting_value_and_grad); 0 = all classes in one pass. Bounds activation memory per device
    # whatever the device count.
    accum_classes_per_device=Field(0, NON_NEGATIVE, "0 (one pass), or a divisor of the classes "
                                                    "each device holds, e.g. 4"),
    # Lower bound of every pair's affinity A_ij (times w_j); 0 = none. The released code uses
    # drifting.RELEASED_AFFINITY_FLOOR = 1e-3 (ImageNet configs set it). Against the uniform
    # affinity 1/sqrt(N (P + N + U)) it weighs more the larger the batch: ~1% at 64 x 144, but at
    # the toy's 512 x 1024 it swamps the kernel (checkerboard energy distance 0.97 instead of 0.004).
    affinity_floor=Field(0.0, number(0.0), "0.0, or 1e-3 (released ImageNet configs)"),
    # N_c classes per step, each with num_pos real and num_neg generated.
    classes_per_step=Field(64, POSITIVE, "at most data.num_classes, e.g. 64"),
    num_pos=Field(64, POSITIVE, "at most drifting.queue_len, e.g. 64"),
    # Real samples kept per class on device.
    queue_len=Field(128, POSITIVE, "e.g. 128", shape=True),
    # How the queues store samples: "float32", or "uint8" for 8-bit pixel data (imagenet_pixels,
    # cifar10): 4x less memory; every 8-bit level is kept, and a draw is within 2^-24 of the
    # float32 bank's (mf_jax/class_queues.py).
    bank_dtype=Field("float32", choice(*STORAGE_DTYPES),
                     "float32, or uint8 for 8-bit pixel data (imagenet_pixels, cifar10)",
                     shape=True),
    # Guidance negatives (num_unc per class) are drawn from the most recent uncond_queue_len real
    # samples of any class; 0 draws them from the other classes of the step instead.
    uncond_queue_len=Field(1000, NON_NEGATIVE, "1000 (released); 0 = guidance negatives from the "
                                               "step's other classes"),
    # Before the first step the queues are filled from the stream until every class holds num_pos
    # samples; a bounded wait (> one ImageNet epoch, so class-ordered shards reach every class).
    fill_max_examples=Field(2_000_000, POSITIVE, "2000000 (more than one ImageNet epoch)"),
    # Workdir of a method="mae" run whose encoder gives the feature space; "" = raw samples.
    feature_encoder_workdir=Field("", text(), "the workdir of a method='mae' run, or ''",
                                  shape=True),
    # ConvNeXt-V2 features added to the encoder's (the release's pixel configs, use_convnext):
    # pixel data only. convnext_path: the .npz written by `python -m mf_jax.convert.drifting
    # --convnext_src=... --convnext_out=...`; depths/dims: its size (default ConvNeXt-V2-Base,
    # facebook/convnextv2-base-22k-224, as the release).
    use_convnext=Field(False, boolean(), "False, or True for ConvNeXt-V2 features (pixel data)"),
    convnext_path=Field("", text(), "the .npz of `python -m mf_jax.convert.drifting "
                                    "--convnext_out=...`, or ''"),
    convnext_depths=Field((3, 3, 27, 3), int_tuple(), "(3, 3, 27, 3) (ConvNeXt-V2-Base)"),
    convnext_dims=Field((128, 256, 512, 1024), int_tuple(), "(128, 256, 512, 1024) "
                                                            "(ConvNeXt-V2-Base)"),
    # The release's default (its convnext_bf16: false).
    convnext_compute_dtype=Field("float32", choice("float32", "bfloat16"),
                                 "float32 (release), or bfloat16"),
)


def default_config() -> ml_collections.ConfigDict:
  """The `drifting` config section with the released ablation recipe as defaults."""
  return config_fields.section(CONFIG)


def validate_config(config) -> None:
  """The `drifting` section: every field's rule, then the checks across its fields. Raises
  ConfigError (a ValueError) naming the field and the fix; call before compiling anything."""
  config_fields.check(CONFIG, config, "drifting.")
  if config.num_unc > 0 and config.alpha_min > config.alpha_max:
    raise ConfigError(f"drifting.alpha_min={config.alpha_min}, alpha_max={config.alpha_max}: need "
                      "1 <= alpha_min <= alpha_max (alpha = 1 is no guidance).")
  if config.class_chunk and config.classes_per_step % config.class_chunk:
    raise ConfigError(f"drifting.class_chunk={config.class_chunk} must divide "
                      f"drifting.classes_per_step={config.classes_per_step}.")
  if config.num_pos > config.queue_len:
    raise ConfigError(f"drifting.num_pos={config.num_pos} must lie in [1, drifting.queue_len="
                      f"{config.queue_len}].")


def check_config(config) -> None:
  """The `drifting` section against the rest of the config (data, mae), for method='drifting'."""
  d, classes = config.drifting, max(config.data.num_classes, 1)
  validate_config(d)
  if not 1 <= d.classes_per_step <= classes:
    raise ConfigError(f"drifting.classes_per_step={d.classes_per_step} must lie in [1, {classes}] "
                      f"(data.num_classes={config.data.num_classes}).")
  if d.bank_dtype == "uint8" and config.data.name not in PIXEL_DATA:
    raise ConfigError(f"drifting.bank_dtype='uint8' stores 8-bit pixels, which data.name="
                      f"{config.data.name!r} does not give (only {' and '.join(PIXEL_DATA)} do): "
                      "set drifting.bank_dtype='float32'.")
  enc = d.feature_encoder_workdir
  if enc and config.mae.arch == "release":
    check_release_mae(config)
  if enc and not os.path.isdir(os.path.join(enc, "checkpoints")):
    raise ConfigError(f"drifting.feature_encoder_workdir={enc!r} holds no checkpoints/ folder: "
                      "pretrain the encoder with method='mae' into it, or set it to ''.")
  if d.use_convnext:
    _convnext_shapes(config)


def _convnext_shapes(config):
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
