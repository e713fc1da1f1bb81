"""Reader for the latent records of `prepare_imagenet`, and the in-step posterior draw.

Batch structure shared by every dataset of the project (numpy, host-local batch B):
  x           float32 [B, h, w, c]  pixels in [-1, 1], or the latent posterior mean (unscaled)
  x_std       float32 [B, h, w, c]  latent posterior std (latent datasets only)
  x_flip      float32 [B, h, w, c]  the same for the horizontally flipped image
  x_flip_std  float32 [B, h, w, c]  (latent datasets only)
  label       int32   [B]
  index       int64   [B]           position of the example in its split

Records are read by number (`records.open_records`) in the order of `input_pipeline.sampler`:
each step's batch is a pure function of (seed, step). The host only copies bytes; sampling the
posterior, the flip and the scale happen on device inside the jitted train step through
`draw_latents`.
"""
from typing import Dict, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np

from input_pipeline import records, sampler

Batch = Dict[str, np.ndarray]


def to_batch(rows: np.ndarray, flip: bool = True) -> Batch:
  """Structured records [B] (`records.RecordLayout.numpy_dtype`) -> batch dict (module docstring).

  flip=False (data.random_flip=False) leaves out x_flip and x_flip_std, which draw_latents then
  never reads: half the bytes copied to the device per step.
  """
  batch = {"x": rows["mean"].astype(np.float32), "x_std": rows["std"].astype(np.float32)}
  if flip:
    batch.update(x_flip=rows["flip_mean"].astype(np.float32),
                 x_flip_std=rows["flip_std"].astype(np.float32))
  batch.update(label=rows["label"].astype(np.int32), index=rows["index"].astype(np.int64))
  return batch


def dataset_info(path: str) -> dict:
  """count, num_classes and latent shape [h, w, c] of a prepared directory (reads the manifest only)."""
  m = records.read_manifest(path)
  return {"count": m["count"], "num_classes": m["num_classes"], "shape": tuple(m["layout"].shape),
          "dtype": m["dtype"], "num_shards": len(m["shards"])}


def open_latents(path: str):
  """Every latent record of a prepared directory, by number; refuses pixel records."""
  m = records.read_manifest(path)
  if m["layout"].arrays != records.LATENT_FIELDS:
    raise ValueError(f"{m['dir']!r} holds {m['format']} records, not latents: read it with "
                     "data.name='imagenet_pixels'.")
  return records.open_records(m)


def read_examples(path: str, numbers) -> Batch:
  """The examples with these numbers (0..count-1, shards in manifest order) as one batch."""
  return to_batch(open_latents(path).read(np.asarray(numbers)))


def make_dataset(path: str, *, global_batch_size: int, seed: int = 0, start_step: int = 0,
                 process_index: Optional[int] = None,
                 process_count: Optional[int] = None, flip: bool = True) -> Iterator[Batch]:
  """This process's part of every step's batch, from start_step on, from a prepare_imagenet dir.

  Args:
    path: the output directory (or its manifest.json).
    global_batch_size: examples per step over all processes; this process gets
      global_batch_size / process_count of them (`input_pipeline.sampler`).
    seed, start_step: the batch of step s is a pure function of (seed, s).
    process_index, process_count: which part of each global batch this host reads (default: JAX's).
    flip: whether batches carry the flipped view (data.random_flip); see to_batch.
  Raises ValueError / FileNotFoundError naming the manifest, shard or record when the data is bad
  (shard sizes before the first batch, record checksums as they are read).
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  source = open_latents(path)
  return sampler.batches(lambda numbers: to_batch(source.read(numbers), flip),
                         num_examples=len(source), global_batch_size=global_batch_size, seed=seed,
                         start_step=start_step, process_index=process_index,
                         process_count=process_count)


def draw_latents(batch, key: jax.Array, scale: float, flip: bool = True) -> jax.Array:
  """Model input x for one step; call INSIDE the jitted train step.

  Latent batches: per sample a fair coin picks the image or its horizontal flip (flip=False,
  i.e. data.random_flip=False: always the image), then a fresh posterior sample
  (mean + std * N(0, 1)) is drawn and multiplied by `scale` (SD-VAE: 0.18215).
  Pixel batches (no "x_std") are returned unchanged: batch["x"] (pixel flips are the caller's).
  Shapes: batch arrays [B, h, w, c] -> [B, h, w, c] float32.
  """
  if "x_std" not in batch:
    return batch["x"]
  k_flip, k_noise = jax.random.split(key)
  x = batch["x"]
  if not flip:  # The same noise draw as with flips, so the switch changes only the view.
    return (x + batch["x_std"] * jax.random.normal(k_noise, x.shape, x.dtype)) * scale
  flipped = jax.random.bernoulli(k_flip, 0.5, (x.shape[0],) + (1,) * (x.ndim - 1))
  mean = jnp.where(flipped, batch["x_flip"], x)
  std = jnp.where(flipped, batch["x_flip_std"], batch["x_std"])
  return (mean + std * jax.random.normal(k_noise, x.shape, x.dtype)) * scale
