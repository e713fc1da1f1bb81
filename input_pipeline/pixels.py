"""Reader for the pixel records of `prepare_imagenet --pixels` (pixel-space ImageNet, no VAE).

Batches (numpy, host-local batch B), as every data set of the project (see input_pipeline.latents):
  x       float32 [B, S, S, 3]  pixels in [-1, 1] (uint8 v -> v / 127.5 - 1, the release's range)
  label   int32   [B]
  index   int64   [B]           position of the example in its split

Records are read by number through the same flat shards and sampler as latents
(`records.open_records`, `input_pipeline.sampler`): each step's examples are a pure function of
(seed, step), and so are its crops (below), so a resumed pixel run reads exactly what the
uninterrupted run read, on any process count.

Augmentation: the records hold the S x S centre crop (ADM rule). With random_crop_min_area > 0
each image is first cropped as torchvision's RandomResizedCrop does (area fraction uniform in
[random_crop_min_area, 1], log aspect ratio uniform in [log 3/4, log 4/3], 10 tries, else the
whole image) and resized back to S x S with PIL's bicubic filter (uint8 levels, as a PIL-based
torchvision pipeline). The release's pixel configs use area [0.2, 1] (use_aug) - on the full
image, where this crops the stored centre crop. The boxes of a step are drawn for the whole
global batch from (seed, step) and this process takes its rows. The horizontal flip is the train
step's (data.random_flip), on device.
"""
import math
import os
from typing import Dict, Iterator, Optional

import jax
import numpy as np
from PIL import Image

from input_pipeline import records, sampler

CROP_ATTEMPTS = 10  # torchvision's RandomResizedCrop tries this many boxes, then takes the image.
CROP_LOG_RATIO = (math.log(3 / 4), math.log(4 / 3))
CROP_STREAM = 0x9C12  # Separates the crop draws from any other stream keyed by (seed, step).
# Reader threads, each gathering and cropping one step's batch (PIL's resize releases the GIL).
WORKERS = max(2, min(16, os.cpu_count() or 2))


def crop_boxes(rng: np.random.Generator, batch: int, size: int, min_area: float) -> np.ndarray:
  """RandomResizedCrop boxes on size x size images: int64 [batch, 4] (top, left, height, width).

  Each try draws an area fraction in [min_area, 1] and a log aspect ratio; the first try whose
  box fits is taken, the whole image if none does.
  """
  u = rng.random((batch, CROP_ATTEMPTS, 4))
  area = size * size * (min_area + (1.0 - min_area) * u[..., 0])
  ratio = np.exp(CROP_LOG_RATIO[0] + (CROP_LOG_RATIO[1] - CROP_LOG_RATIO[0]) * u[..., 1])
  width, height = np.round(np.sqrt(area * ratio)), np.round(np.sqrt(area / ratio))
  fits = (width > 0) & (width <= size) & (height > 0) & (height <= size)
  first = np.argmax(fits, axis=1)
  pick = lambda a: np.take_along_axis(a, first[:, None], axis=1)[:, 0]
  found = fits.any(axis=1)
  height = np.where(found, pick(height), size)
  width = np.where(found, pick(width), size)
  top = np.floor(pick(u[..., 2]) * (size - height + 1))  # uniform in [0, size - height]
  left = np.floor(pick(u[..., 3]) * (size - width + 1))
  return np.stack([top, left, height, width], axis=1).astype(np.int64)


def resized_crops(images: np.ndarray, boxes: np.ndarray) -> np.ndarray:
  """uint8 [B, S, S, C], boxes [B, 4] -> uint8 [B, S, S, C]: each box bicubic-resized to S x S."""
  size = images.shape[1]
  out = np.empty_like(images)
  for i, (top, left, height, width) in enumerate(boxes.tolist()):
    if height == size and width == size:
      out[i] = images[i]
      continue
    out[i] = np.asarray(Image.fromarray(images[i]).resize(
        (size, size), Image.BICUBIC, box=(left, top, left + width, top + height)))
  return out


def step_crops(images: np.ndarray, step: int, *, seed: int, min_area: float, global_batch_size: int,
               process_index: int) -> np.ndarray:
  """This process's images of `step` cropped: boxes of the global batch from (seed, step)."""
  rng = np.random.default_rng([seed % 2**63, step, CROP_STREAM])
  boxes = crop_boxes(rng, global_batch_size, images.shape[1], min_area)
  local = len(images)
  return resized_crops(images, boxes[process_index * local:(process_index + 1) * local])


def to_batch(images: np.ndarray, label: np.ndarray, index: np.ndarray) -> Dict[str, np.ndarray]:
  """uint8 images [B, S, S, 3], labels, indices -> batch dict (module docstring)."""
  x = images.astype(np.float32)
  np.divide(x, 127.5, out=x)  # In place: 768 KiB per 256 x 256 image.
  np.subtract(x, 1.0, out=x)
  return {"x": x, "label": label.astype(np.int32),
          "index": index.astype(np.int64)}


def open_pixels(path: str):
  """(manifest, records) of a prepare_imagenet --pixels directory; refuses latent records."""
  m = records.read_manifest(path)
  if m["layout"].arrays != records.PIXEL_FIELDS:
    raise ValueError(f"{m['dir']!r} holds {m['format']} records, not pixels: read it with "
                     "data.name='imagenet_latents', or prepare pixels with prepare_imagenet "
                     "--pixels.")
  return m, records.open_records(m)


def read_examples(path: str, numbers) -> Dict[str, np.ndarray]:
  """The examples with these numbers (0..count-1, shards in manifest order), uncropped."""
  rows = open_pixels(path)[1].read(np.asarray(numbers))
  return to_batch(rows["image"], rows["label"], rows["index"])


def make_dataset(path: str, *, global_batch_size: int, seed: int = 0, start_step: int = 0,
                 process_index: Optional[int] = None, process_count: Optional[int] = None,
                 random_crop_min_area: float = 0.0) -> Iterator[Dict[str, np.ndarray]]:
  """This process's part of every step's batch, from start_step on, from a `prepare_imagenet
  --pixels` directory. Arguments as `input_pipeline.latents.make_dataset`; random_crop_min_area:
  0 keeps the stored crop, > 0 (at most 1) crops as RandomResizedCrop with area in
  [random_crop_min_area, 1]. Errors name the manifest, shard and record (records.py)."""
  if not 0.0 <= random_crop_min_area <= 1.0:
    raise ValueError(f"data.random_crop_min_area={random_crop_min_area} must lie in [0, 1] "
                     "(0 = no crop; 0.2 = the release's pixel augmentation).")
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  _, source = open_pixels(path)

  def crop_and_scale(rows, step):  # Runs in the reader's threads, after the records are read.
    images = rows["image"]
    if random_crop_min_area > 0:
      images = step_crops(images, step, seed=seed, min_area=random_crop_min_area,
                          global_batch_size=global_batch_size, process_index=process_index)
    return to_batch(images, rows["label"], rows["index"])

  return sampler.batches(source.read, num_examples=len(source), global_batch_size=global_batch_size,
                         seed=seed, start_step=start_step, process_index=process_index,
                         process_count=process_count, workers=WORKERS,
                         prefetch=WORKERS + 1, augment=crop_and_scale)
