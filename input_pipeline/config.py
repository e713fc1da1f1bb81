"""The `data` config section, declared once (mf_jax/config_fields.py), and the training files'
checks: a data set's files are checked before anything is compiled (train mode only)."""
import glob
import os

from input_pipeline import DATASETS
from mf_jax.config_fields import (FRACTION, NON_NEGATIVE, POSITIVE, Field, boolean, choice,
                                  number, text)
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
    # Local diffusers AutoencoderKL weights, to decode latent samples.
    vae_path=Field("", text(), "a local diffusers AutoencoderKL folder, or '' (no decoding)"),
    random_flip=Field(True, boolean(), "True or False"),
    # imagenet_pixels: RandomResizedCrop of the stored crop with area in [this, 1]; 0 = none.
    random_crop_min_area=Field(0.0, FRACTION, "0.0 (no crop), or 0.2 (the release's pixel "
                                              "configs)"),
    # Training-set size; needed only by optim.warmup_epochs.
    num_train_examples=Field(0, NON_NEGATIVE, "0, or 50000 for CIFAR-10 with optim.warmup_epochs"),
)


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
