"""Drawing images from a trained model: sharded sampling, decoding to uint8, grids and ADM .npz.

Used by the periodic sample grids during training and by `--mode=sample`.
"""
import functools
import os
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from PIL import Image

from mf_jax import objectives
from mf_jax import sharding as sharding_lib
from mf_jax.sampling import guided_u_fn  # noqa: F401  (sampling-time guidance; re-exported)


def make_sampler(config, model, mesh):
  """Returns sample_fn(params, noise, labels, num_steps, cfg_scale=1.0, interval=None) -> samples,
  jitted over the mesh (None for a method that does not sample); what a step is belongs to
  config.method (Objective.make_sample_fn). cfg_scale is the method's guidance scale (MeanFlow's
  CFG scale, Drifting's alpha, iMF's omega); interval, a (t_min, t_max) guidance interval, only
  for methods that condition on one (Objective.samples_with_interval)."""
  batch = sharding_lib.batch_sharding(mesh)
  sample = objectives.get(config.method).make_sample_fn(config, model)
  if sample is None:  # A method without samples (e.g. MAE pretraining).
    return None

  @functools.partial(jax.jit, static_argnames=("num_steps", "cfg_scale", "interval"),
                     in_shardings=(None, batch, batch), out_shardings=batch)
  def sample_fn(params, noise, labels, num_steps, cfg_scale=1.0, interval=None):
    if interval is None:
      return sample(params, noise, labels, num_steps, cfg_scale)
    return sample(params, noise, labels, num_steps, cfg_scale, interval)

  return sample_fn


LABEL_SAMPLING = ("cycle", "uniform")
UINT8_ROUNDING = ("half_even", "half_up")


def sample_inputs(key, start: int, batch_size: int, shape, num_classes: int,
                  label_sampling: str = "cycle"):
  """Noise [batch_size, *shape] from `key` and labels [batch_size] int32.

  Labels cycle through the classes from `start` ("cycle": exactly N / num_classes per class), or
  are drawn uniformly at random from fold_in(key, 1) ("uniform", the official MeanFlow evaluation).
  Sample grids, --mode=sample and the evaluators all draw their inputs here, chunk i with
  key fold_in(seed, i), so the same seed gives the same samples (and noise) everywhere.
  """
  noise = jax.random.normal(key, (batch_size,) + tuple(shape))
  if label_sampling == "uniform":
    labels = jax.random.randint(jax.random.fold_in(key, 1), (batch_size,), 0, max(num_classes, 1),
                                jnp.int32)
  elif label_sampling == "cycle":
    labels = ((start + jnp.arange(batch_size)) % max(num_classes, 1)).astype(jnp.int32)
  else:
    raise ValueError(f"eval.label_sampling={label_sampling!r}: allowed values are "
                     f"{list(LABEL_SAMPLING)}.")
  return noise, labels


def draw(config, sample_fn, params, mesh, num_samples: int, num_steps: int, seed: int,
         cfg_scale: float = 1.0, interval=None):
  """Samples in batches of config.sample.batch_size; labels cycle through the classes.

  Returns (samples float32 [N, H, W, C] in data space, labels int32 [N]) on every host.
  """
  d = config.data
  bs = config.sample.batch_size
  if bs % jax.device_count():
    raise ValueError(f"sample.batch_size={bs} must be divisible by the device count "
                     f"{jax.device_count()}.")
  outs, labels_all = [], []
  for i, start in enumerate(range(0, num_samples, bs)):
    key = jax.random.fold_in(jax.random.key(seed), i)
    noise, labels = sample_inputs(key, start, bs, (d.image_size, d.image_size, d.channels),
                                  d.num_classes)
    put = lambda a: jax.device_put(a, sharding_lib.batch_sharding(mesh))
    x = sample_fn(params, put(noise), put(labels), num_steps, cfg_scale, interval)
    outs.append(np.asarray(multihost_utils.process_allgather(x, tiled=True)))
    labels_all.append(np.asarray(labels))
  return np.concatenate(outs)[:num_samples], np.concatenate(labels_all)[:num_samples]


# Data sets whose samples are SD-VAE latents. Every other data set (digits, cifar10,
# imagenet_pixels, ...) is sampled in pixel space: no decoding and no VAE needed.
LATENT_DATA_SETS = ("imagenet_latents",)


def decodes_with_vae(config) -> bool:
  """The one switch for decoding: sample grids, --mode=sample, evaluation and the config checks
  all ask here whether samples go through the SD-VAE at data.vae_path before becoming images."""
  return config.data.name in LATENT_DATA_SETS


@functools.lru_cache(maxsize=2)
def load_decoder(vae_path: str, scale: float, mean: Tuple[float, ...] = (),
                 std: Tuple[float, ...] = ()):
  """Jitted model latents x [B, h, w, c] -> images in [-1, 1] through the SD-VAE at `vae_path`
  (loaded once). Inverts the training normalisation (input_pipeline.latents.draw_latents): the
  VAE gets z = x / scale, or z = x * std + mean per channel when the statistics are given."""
  from mf_jax.models import vae
  from mf_jax.convert.formats import sd_vae as vae_convert
  vae_config, params, _ = vae_convert.load_vae(vae_path)
  if mean:
    return jax.jit(lambda x: vae.decode_latents(
        vae_config, params, x * jnp.asarray(std, x.dtype) + jnp.asarray(mean, x.dtype)))
  return jax.jit(lambda z: vae.decode_latents(vae_config, params, z / scale))


def decoder_settings(config) -> tuple:
  """load_decoder's arguments from config.data (hashable: the statistics as float tuples)."""
  d = config.data
  return (d.vae_path, d.latent_scale, tuple(map(float, d.latent_mean)),
          tuple(map(float, d.latent_std)))


def decode(x, config, batch_size: int = 32) -> np.ndarray:
  """Data-space samples -> images in [-1, 1]: latent models go through the SD-VAE decoder."""
  if not decodes_with_vae(config):
    return np.asarray(x)
  if not config.data.vae_path:
    raise ValueError("data.vae_path is empty: decoding latent samples needs local SD-VAE weights "
                     "(a diffusers AutoencoderKL folder, .safetensors or .bin), e.g. "
                     "--config.data.vae_path=/models/sd-vae-ft-mse.")
  decoder = load_decoder(*decoder_settings(config))
  return np.concatenate([np.asarray(decoder(x[i:i + batch_size]))
                         for i in range(0, len(x), batch_size)])


def quantize_uint8(x, rounding: str = "half_even"):
  """Images in [-1, 1] -> uint8 [0, 255], on host or device arrays alike.

  "half_even": round(127.5 (x + 1)), halves to even. "half_up": floor(127.5 x + 128), the official
  MeanFlow evaluation (halves up). Both clip to [0, 255].
  """
  if rounding == "half_up":
    return jnp.clip(jnp.floor(127.5 * x + 128.0), 0, 255).astype(jnp.uint8)
  if rounding != "half_even":
    raise ValueError(f"eval.uint8_rounding={rounding!r}: allowed values are {list(UINT8_ROUNDING)}.")
  return jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def to_uint8(x, config) -> np.ndarray:
  """Data-space samples -> uint8 images [N, H, W, C] (decoded first for latent models), rounded as
  config.eval.uint8_rounding says, so sample files and pixel reference statistics match the evaluator."""
  return np.asarray(quantize_uint8(decode(x, config), config.eval.uint8_rounding))


def grid(images: np.ndarray, cols: int = 8, upscale: int = 1) -> np.ndarray:
  """[N, H, W, C] uint8 -> one [rows*H, cols*W, C] mosaic with 1-pixel gaps."""
  n, h, w, c = images.shape
  rows = -(-n // cols)
  out = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1, c), 255, np.uint8)
  for i, img in enumerate(images):
    r, k = divmod(i, cols)
    out[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + k * (w + 1):1 + k * (w + 1) + w] = img
  return out.repeat(upscale, 0).repeat(upscale, 1)


def save_png(image: np.ndarray, path: str) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)


def save_npz(images: np.ndarray, labels: np.ndarray, path: str) -> None:
  """ADM-style sample batch: arr_0 uint8 [N, H, W, C], arr_1 int labels [N]."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  np.savez(path, images, labels)
