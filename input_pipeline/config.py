"""The `data` config section, declared once (mf_jax/config_fields.py), and the training files'
checks: a data set's files are checked before anything is compiled (train mode only)."""
import glob
import os

from input_pipeline import DATASETS
from mf_jax.config_fields import (FRACTION, NON_NEGATIVE, POSITIVE, Field, boolean, choice,
                                  number, number_tuple, text)
from mf_jax.errors import ConfigError

CONFIG = dict(
    name=Field("imagenet_latents", choice(*DATASETS), "a data set this codebase reads"),
    # Folder of prepared records, or a TFDS data_dir.
    path=Field("", text(), "the folder of prepared records (latents, pixels) or the TFDS data_dir "
                           "(cifar10)"),
    image_size=Field(32, POSITIVE, "the stored image/latent side, e.g. 32 for ImageNet latents",
                     shape=True),
    channels=Field(4, POSITIVE, "4 for SD-VAE latents, 3 for RGB, 1 for digits", shape=True),
    # Null label = num_classes; 0 = unconditional.
    num_classes=Field(1000, NON_NEGATIVE, "0 for unconditional, else the label count", shape=True),
    # SD-VAE scale; latents only.
    latent_scale=Field(0.18215, number(0.0, lo_open=True), "0.18215 for SD-VAE latents"),
    # Per-channel latent normalisation x = (z - mean) / std (iMF), replacing latent_scale when set;
    # () = x = z * latent_scale. The statistics of a prepared set are printed by prepare_imagenet
    # and stored in its manifest (`input_pipeline.latents.latent_statistics`).
    latent_mean=Field((), number_tuple(), "() or one number per channel (data.channels), e.g. the "
                                          "'mean' of prepare_imagenet's manifest latent_statistics"),
    latent_std=Field((), number_tuple(0.0, lo_open=True),
                     "() or one positive number per channel (data.channels), e.g. the 'std' of "
                     "prepare_imagenet's manifest latent_statistics"),
    # Local diffusers AutoencoderKL weights, to decode latent samples.
    vae_path=Field("", text(), "a local diffusers AutoencoderKL folder, or '' (no decoding)"),
    random_flip=Field(True, boolean(), "True or False"),
    # imagenet_pixels: RandomResizedCrop of the stored crop with area in [this, 1]; 0 = none.
    random_crop_min_area=Field(0.0, FRACTION, "0.0 (no crop), or 0.2 (the release's pixel "
                                              "configs)"),
    # Training-set size; needed only by optim.warmup_epochs.
    num_train_examples=Field(0, NON_NEGATIVE, "0, or 50000 for CIFAR-10 with optim.warmup_epochs"),
)


def check_latent_statistics(config) -> None:
  """data.latent_mean / latent_std: both empty, or one value per channel each."""
  d = config.data
  if (d.latent_mean or d.latent_std) and d.name != "imagenet_latents":
    raise ConfigError(f"data.latent_mean/latent_std are set, but data.name={d.name!r} holds no "
                      "latents and nothing would be normalised. Fix: set both to ().")
  for name in ("latent_mean", "latent_std"):
    n = len(d[name])
    if n not in (0, d.channels):
      raise ConfigError(f"data.{name} has {n} values, but data.channels={d.channels}. Fix: set "
                        f"--config.data.{name} to one value per channel, or () for latent_scale.")
  if bool(d.latent_mean) != bool(d.latent_std):
    empty, other = ("latent_mean", "latent_std") if not d.latent_mean else ("latent_std",
                                                                            "latent_mean")
    raise ConfigError(f"data.{empty} is empty but data.{other} is set. Fix: set both (per-channel "
                      "normalisation) or neither (data.latent_scale).")


def check_training_files(config) -> None:
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
