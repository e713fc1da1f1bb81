"""Reader for the latent records of `prepare_imagenet`, and the in-step posterior draw.

Batch structure shared by every dataset of the project (numpy, host-local batch B):
  x           float32 [B, h, w, c]  pixels in [-1, 1], or the latent posterior mean (unscaled)
  x_std       float32 [B, h, w, c]  latent posterior std (latent datasets only)
  x_flip      float32 [B, h, w, c]  the same for the horizontally flipped image
  x_flip_std  float32 [B, h, w, c]  (latent datasets only)
  label       int32   [B]
  index       int64   [B]           position of the example in its split

The host only parses bytes; sampling the posterior, the flip and the scale happen on device inside
the jitted train step through `draw_latents`.
"""
import os
from typing import Callable, Dict, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf

from input_pipeline import records

try:  # tf.data is host-only here: keep TensorFlow off any accelerator JAX owns.
  tf.config.set_visible_devices([], "GPU")
except (RuntimeError, ValueError):
  pass

Batch = Dict[str, np.ndarray]


def _shards_for_process(m: dict, process_index: int, process_count: int):
  """Shard files of this process: every process_count-th shard, so processes never overlap."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} outside [0, process_count={process_count}).")
  shards = [s for s in m["shards"] if s["count"] > 0]
  if len(shards) < process_count:
    raise ValueError(f"Latent data in {m['dir']!r} has {len(shards)} non-empty shards, fewer than "
                     f"process_count={process_count}: re-run prepare_imagenet with a smaller "
                     "--shard_size.")
  mine = shards[process_index::process_count]
  return [records.check_shard_header(m, s) for s in mine], mine


def _parse_batch(layout: records.RecordLayout):
  """tf function: [B] raw records -> batch dict (see module docstring)."""
  offsets = layout.offsets()
  item = np.dtype(layout.dtype).itemsize
  n = int(np.prod(layout.shape))
  tf_dtype = tf.float32 if layout.dtype == "float32" else tf.float16

  def parse(raw):
    b = tf.io.decode_raw(raw, tf.uint8)  # [B, record_bytes]
    bsz = tf.shape(b)[0]

    def latent(field):
      chunk = b[:, offsets[field]:offsets[field] + n * item]
      vals = tf.bitcast(tf.reshape(chunk, [bsz, n, item]), tf_dtype)
      return tf.cast(tf.reshape(vals, [bsz, *layout.shape]), tf.float32)

    def int64(field):
      return tf.bitcast(tf.reshape(b[:, offsets[field]:offsets[field] + 8], [bsz, 8]), tf.int64)

    return {"x": latent("mean"), "x_std": latent("std"), "x_flip": latent("flip_mean"),
            "x_flip_std": latent("flip_std"), "label": tf.cast(int64("label"), tf.int32),
            "index": int64("index")}
  return parse


def make_tf_dataset(path: str, *, batch_size: int, seed: int = 0,
                    process_index: Optional[int] = None, process_count: Optional[int] = None,
                    shuffle: bool = True, repeat: bool = True,
                    drop_remainder: Optional[bool] = None, shuffle_buffer: int = 16384,
                    cycle_length: int = 8, parse: Optional[Callable] = None) -> tf.data.Dataset:
  """The tf.data pipeline behind `make_dataset` (same arguments).

  parse(dataset of [B] raw records, manifest) -> dataset of batch dicts; default: the latent parse
  (`input_pipeline.pixels` passes its own).

  Returns (dataset, manifest, shard paths of this process).
  """
  if batch_size <= 0:
    raise ValueError(f"batch_size={batch_size} must be positive (host-local batch).")
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  m = records.read_manifest(path)
  files, _ = _shards_for_process(m, process_index, process_count)
  drop_remainder = repeat if drop_remainder is None else drop_remainder

  # Shuffle (files, then records) inside an epoch and repeat after it: exact epochs, each record
  # once per epoch on exactly one process, a new order every epoch.
  ds = tf.data.Dataset.from_tensor_slices(files)
  if shuffle:
    # Seeds differ per process so processes do not walk their shards in lock step.
    ds = ds.shuffle(len(files), seed=seed * 1000003 + process_index, reshuffle_each_iteration=True)
  ds = ds.interleave(lambda f: tf.data.TFRecordDataset(f, buffer_size=1 << 20),
                     cycle_length=min(cycle_length, len(files)), block_length=1,
                     num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  if shuffle:
    ds = ds.shuffle(shuffle_buffer, seed=seed * 1000003 + process_index + 1,
                    reshuffle_each_iteration=True)
  if repeat:
    ds = ds.repeat()
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  if parse is not None:
    ds = parse(ds, m)
  elif m["layout"].arrays != records.LATENT_FIELDS:
    raise ValueError(f"{m['dir']!r} holds {m['format']} records, not latents: read it with "
                     "data.name='imagenet_pixels'.")
  else:
    ds = ds.map(_parse_batch(m["layout"]), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.prefetch(tf.data.AUTOTUNE)
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options), m, files


def dataset_info(path: str) -> dict:
  """count, num_classes and latent shape [h, w, c] of a prepared directory (reads the manifest only)."""
  m = records.read_manifest(path)
  return {"count": m["count"], "num_classes": m["num_classes"], "shape": tuple(m["layout"].shape),
          "dtype": m["dtype"], "num_shards": len(m["shards"])}


def _diagnose(m: dict, files, err: Exception):
  """Find which of this process's shards is bad, to raise an error that names it."""
  for shard in m["shards"]:
    if os.path.join(m["dir"], shard["file"]) in files:
      records.read_shard(m, shard)  # raises ValueError naming the file
  raise ValueError(f"Reading latent shards in {m['dir']!r} failed ({err}); no single shard "
                   "reproduces it on its own.") from err


def make_dataset(path: str, *, batch_size: int, seed: int = 0,
                 process_index: Optional[int] = None, process_count: Optional[int] = None,
                 shuffle: bool = True, repeat: bool = True, drop_remainder: Optional[bool] = None,
                 shuffle_buffer: int = 16384, parse: Optional[Callable] = None) -> Iterator[Batch]:
  """Iterator of host-local numpy batches (module docstring) from a prepare_imagenet directory.

  Args:
    path: the output directory (or its manifest.json, or a glob of its shards).
    batch_size: examples per batch on this host.
    seed: shuffle seed; with the same seed and process the order is identical.
    process_index, process_count: which share of the shards this host reads (default: JAX's).
      Processes read disjoint shards; together they cover each record once per epoch.
    shuffle: shuffle shard order and records (buffer `shuffle_buffer`).
    repeat: loop forever; otherwise one epoch of this process's shards.
    drop_remainder: drop the last partial batch (default: = repeat).
    parse: see make_tf_dataset.
  Raises ValueError / FileNotFoundError naming the manifest or shard when the data is bad.
  """
  ds, m, files = make_tf_dataset(path, batch_size=batch_size, seed=seed,
                                 process_index=process_index, process_count=process_count,
                                 shuffle=shuffle, repeat=repeat, drop_remainder=drop_remainder,
                                 shuffle_buffer=shuffle_buffer, parse=parse)

  def generate():
    it = ds.as_numpy_iterator()
    while True:
      try:
        batch = next(it)
      except StopIteration:
        return
      except tf.errors.OpError as e:
        _diagnose(m, files, e)
      yield batch
  return generate()


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
