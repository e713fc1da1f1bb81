"""Reader for the pixel records of `prepare_imagenet --pixels` (pixel-space ImageNet, no VAE).

Batches (numpy, host-local batch B), as every data set of the project (see input_pipeline.latents):
  x       float32 [B, S, S, 3]  pixels in [-1, 1] (uint8 v -> v / 127.5 - 1, the release's range)
  label   int32   [B]
  index   int64   [B]           position of the example in its split

Augmentation: the records hold the S x S centre crop (ADM rule). With random_crop_min_area > 0
each image is first cropped as torchvision's RandomResizedCrop does (area fraction uniform in
[random_crop_min_area, 1], log aspect ratio uniform in [log 3/4, log 4/3], 10 tries, else the
whole image) and resized back to S x S with bicubic interpolation, then rounded to uint8 levels.
The release's pixel configs use area [0.2, 1] (use_aug) - on the full image, where this crops
the stored centre crop. The horizontal flip is the train step's (data.random_flip), on device.
Shuffling, sharding over processes and the errors naming a bad shard are the latent reader's.
"""
import math
from typing import Dict, Iterator, Optional

import jax
import numpy as np
import tensorflow as tf

from input_pipeline import latents, records

CROP_ATTEMPTS = 10  # torchvision's RandomResizedCrop tries this many boxes, then takes the image.
CROP_LOG_RATIO = (math.log(3 / 4), math.log(4 / 3))


def crop_boxes(seed, batch: int, size: int, min_area: float) -> tf.Tensor:
  """RandomResizedCrop boxes on size x size images: int32 [batch, 4] (top, left, height, width).

  seed: stateless seed [2]. Each try draws an area fraction in [min_area, 1] and a log aspect
  ratio; the first try whose box fits is taken, the whole image if none does.
  """
  u = tf.random.stateless_uniform([batch, CROP_ATTEMPTS, 4], seed, dtype=tf.float64)
  area = size * size * (min_area + (1.0 - min_area) * u[..., 0])
  ratio = tf.exp(CROP_LOG_RATIO[0] + (CROP_LOG_RATIO[1] - CROP_LOG_RATIO[0]) * u[..., 1])
  width = tf.round(tf.sqrt(area * ratio))
  height = tf.round(tf.sqrt(area / ratio))
  fits = (width > 0) & (width <= size) & (height > 0) & (height <= size)
  first = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)
  pick = lambda a: tf.gather(a, first, axis=1, batch_dims=1)
  found = tf.reduce_any(fits, axis=1)
  height = tf.where(found, pick(height), float(size))
  width = tf.where(found, pick(width), float(size))
  top = tf.floor(pick(u[..., 2]) * (size - height + 1))  # uniform in [0, size - height]
  left = tf.floor(pick(u[..., 3]) * (size - width + 1))
  return tf.cast(tf.stack([top, left, height, width], axis=1), tf.int32)


def resized_crops(images: tf.Tensor, boxes: tf.Tensor) -> tf.Tensor:
  """uint8 [B, S, S, C], boxes [B, 4] -> float32 [B, S, S, C]: each box bicubic-resized to S x S,
  rounded and clipped to uint8 levels (as PIL's bicubic resize of a uint8 image)."""
  size = images.shape[1]

  def one(args):
    image, (top, left, height, width) = args[0], tf.unstack(args[1])
    crop = tf.cast(image[top:top + height, left:left + width], tf.float32)
    return tf.image.resize(crop, [size, size], method="bicubic")

  out = tf.map_fn(one, (images, boxes), fn_output_signature=tf.TensorSpec(
      [size, size, images.shape[-1]], tf.float32))
  return tf.clip_by_value(tf.round(out), 0.0, 255.0)


def _parse(seed: int, random_crop_min_area: float):
  """make_tf_dataset's parse hook: raw pixel records -> augmented batch dicts (module docstring)."""

  def parse(ds: tf.data.Dataset, m: dict) -> tf.data.Dataset:
    layout = m["layout"]
    if layout.arrays != records.PIXEL_FIELDS:
      raise ValueError(f"{m['dir']!r} holds {m['format']} records, not pixels: read it with "
                       "data.name='imagenet_latents', or prepare pixels with prepare_imagenet "
                       "--pixels.")
    offsets, shape = layout.offsets(), list(layout.shape)
    n = int(np.prod(shape))

    def parse_batch(raw, batch_seed):
      b = tf.io.decode_raw(raw, tf.uint8)  # [B, record_bytes]
      bsz = tf.shape(b)[0]
      images = tf.reshape(b[:, offsets["image"]:offsets["image"] + n], [bsz, *shape])
      int64 = lambda f: tf.bitcast(tf.reshape(b[:, offsets[f]:offsets[f] + 8], [bsz, 8]), tf.int64)
      if random_crop_min_area > 0:
        x = resized_crops(images, crop_boxes(batch_seed, bsz, shape[0], random_crop_min_area))
      else:
        x = tf.cast(images, tf.float32)
      return {"x": x / 127.5 - 1.0, "label": tf.cast(int64("label"), tf.int32),
              "index": int64("index")}

    # One stateless seed per batch from a seeded stream: the same seed gives the same crops.
    seeds = tf.data.Dataset.random(seed=seed).batch(2)
    return tf.data.Dataset.zip((ds, seeds)).map(parse_batch, num_parallel_calls=tf.data.AUTOTUNE,
                                                deterministic=True)
  return parse


def make_dataset(path: str, *, batch_size: int, seed: int = 0,
                 process_index: Optional[int] = None, process_count: Optional[int] = None,
                 shuffle: bool = True, repeat: bool = True, drop_remainder: Optional[bool] = None,
                 shuffle_buffer: int = 4096,
                 random_crop_min_area: float = 0.0) -> Iterator[Dict[str, np.ndarray]]:
  """Iterator of host-local numpy batches (module docstring) from a `prepare_imagenet --pixels`
  directory. Arguments as `input_pipeline.latents.make_dataset`; random_crop_min_area: 0 keeps the
  stored crop, > 0 (at most 1) crops as RandomResizedCrop with area in [random_crop_min_area, 1]."""
  if not 0.0 <= random_crop_min_area <= 1.0:
    raise ValueError(f"data.random_crop_min_area={random_crop_min_area} must lie in [0, 1] "
                     "(0 = no crop; 0.2 = the release's pixel augmentation).")
  crop_seed = seed * 1000003 + (jax.process_index() if process_index is None else process_index)
  return latents.make_dataset(path, batch_size=batch_size, seed=seed, process_index=process_index,
                              process_count=process_count, shuffle=shuffle, repeat=repeat,
                              drop_remainder=drop_remainder, shuffle_buffer=shuffle_buffer,
                              parse=_parse(crop_seed, random_crop_min_area))
