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
import os
from typing import Dict, Iterator, Optional, Sequence

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


def draw_latents(batch, key: jax.Array, scale: float, flip: bool = True, mean: Sequence[float] = (),
                 std: Sequence[float] = ()) -> jax.Array:
  """Model input x for one step; call INSIDE the jitted train step.

  Latent batches: per sample a fair coin picks the image or its horizontal flip (flip=False,
  i.e. data.random_flip=False: always the image), then a fresh posterior sample
  z = mean + std * N(0, 1) is drawn and normalised: x = z * `scale` (SD-VAE: 0.18215), or, when
  per-channel statistics `mean`, `std` [c] are given (data.latent_mean/latent_std, iMF),
  x = (z - mean) / std per channel and `scale` is unused.
  Pixel batches (no "x_std") are returned unchanged: batch["x"] (pixel flips are the caller's).
  Shapes: batch arrays [B, h, w, c] -> [B, h, w, c] float32.
  """
  if "x_std" not in batch:
    return batch["x"]
  k_flip, k_noise = jax.random.split(key)
  x = batch["x"]
  if not flip:  # The same noise draw as with flips, so the switch changes only the view.
    z = x + batch["x_std"] * jax.random.normal(k_noise, x.shape, x.dtype)
  else:
    flipped = jax.random.bernoulli(k_flip, 0.5, (x.shape[0],) + (1,) * (x.ndim - 1))
    z_mean = jnp.where(flipped, batch["x_flip"], x)
    z_std = jnp.where(flipped, batch["x_flip_std"], batch["x_std"])
    z = z_mean + z_std * jax.random.normal(k_noise, x.shape, x.dtype)
  if len(mean):  # Channels last: the statistics broadcast over [B, h, w].
    return (z - jnp.asarray(mean, z.dtype)) / jnp.asarray(std, z.dtype)
  return z * scale


def latent_statistics(path: str) -> dict:
  """{"mean": [c], "std": [c], ...} that prepare_imagenet stored in a prepared directory's manifest
  (see `compute_latent_statistics`); for data.latent_mean / data.latent_std."""
  m = records.read_manifest(path)
  if "latent_statistics" not in m:
    raise ValueError(f"{os.path.join(m['dir'], records.MANIFEST)!r} has no latent_statistics "
                     "(written by an older prepare_imagenet, or a --pixels set): rerun "
                     "prepare_imagenet with the same flags; it only recomputes the manifest.")
  return m["latent_statistics"]


def compute_latent_statistics(m: dict, chunk: int = 4096) -> dict:
  """Per-channel mean and std of the posterior samples z = mean + std * N(0, 1) of every record of
  a manifest `m` (all examples and positions pooled; the image, not its flip), exactly:
  E[z] = avg(mean), Var[z] = avg(mean^2 + std^2) - E[z]^2 (sums in float64).
  Also the std of the posterior means alone (std_of_posterior_means), for comparison.
  """
  source = records.open_records(m)
  c = m["layout"].shape[-1]
  s_mean, s_mean2, s_var, n = np.zeros(c), np.zeros(c), np.zeros(c), 0
  for a in range(0, len(source), chunk):
    rows = source.read(np.arange(a, min(a + chunk, len(source))))
    mu = rows["mean"].astype(np.float64).reshape(-1, c)
    sd = rows["std"].astype(np.float64).reshape(-1, c)
    s_mean += mu.sum(0)
    s_mean2 += (mu * mu).sum(0)
    s_var += (sd * sd).sum(0)
    n += mu.shape[0]
  mean = s_mean / n
  var_means = np.maximum(s_mean2 / n - mean * mean, 0.0)
  return {"mean": mean.tolist(), "std": np.sqrt(var_means + s_var / n).tolist(),
          "std_of_posterior_means": np.sqrt(var_means).tolist(),
          "over": f"{m['split']} split, {m['count']} examples x "
                  f"{int(np.prod(m['layout'].shape[:-1]))} positions, unflipped posterior samples"}
