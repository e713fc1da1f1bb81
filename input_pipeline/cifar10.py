"""CIFAR-10 (unconditional, pixel space) from a local TFDS data_dir, in the project's batch structure.

Batches are dicts of numpy arrays (host-local batch B):
  x       float32 [B, 32, 32, 3]  pixels in [-1, 1]
  x_flip  float32 [B, 32, 32, 3]  the horizontally flipped image (the trainer decides whether to use it)
  label   int32   [B]             class label (kept for evaluation; training is unconditional)
  index   int64   [B]             example number within the split (from the TFDS id; -1 if absent)
There is no "x_std": `input_pipeline.latents.draw_latents` passes such batches through unchanged.

Nothing is downloaded: prepare the data once where there is internet (see MISSING_DATA_HELP).
"""
import os
from typing import Dict, Iterator, Optional

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

try:  # tf.data is host-only here: keep TensorFlow off any accelerator JAX owns.
  tf.config.set_visible_devices([], "GPU")
except (RuntimeError, ValueError):
  pass

MISSING_DATA_HELP = (
    "Nothing is downloaded at run time. On a machine with internet run\n"
    "  python -c \"import tensorflow_datasets as tfds; "
    "tfds.builder('cifar10', data_dir='DIR').download_and_prepare()\"\n"
    "then copy DIR/cifar10 (the folder holding {version}/) to {data_dir}/cifar10 here.")


def _require_prepared(builder, data_dir: str) -> None:
  if not builder.is_prepared():
    raise FileNotFoundError(
        f"CIFAR-10 (TFDS cifar10 {builder.info.version}) not found in data_dir={data_dir!r}: "
        f"expected {builder.data_dir!r}.\n"
        + MISSING_DATA_HELP.format(version=builder.info.version, data_dir=data_dir))


def _to_batch_structure(example):
  x = tf.cast(example["image"], tf.float32) / 127.5 - 1.0
  ident = example.get("id", tf.constant(""))  # "train_16399"
  number = tf.strings.regex_replace(ident, r"^[a-z]+_", "")
  index = tf.cond(tf.strings.regex_full_match(number, r"[0-9]+"),
                  lambda: tf.strings.to_number(number, tf.int64),
                  lambda: tf.constant(-1, tf.int64))
  return {"x": x, "x_flip": tf.reverse(x, axis=[1]), "label": tf.cast(example["label"], tf.int32),
          "index": index}


def make_dataset(data_dir: str, *, batch_size: int, split: str = "train", seed: int = 0,
                 process_index: Optional[int] = None, process_count: Optional[int] = None,
                 shuffle: bool = True, repeat: bool = True, drop_remainder: Optional[bool] = None,
                 shuffle_buffer: int = 50_000) -> Iterator[Dict[str, np.ndarray]]:
  """Iterator of numpy batches (module docstring) of CIFAR-10 `split` from a local TFDS data_dir.

  Processes read disjoint, near-equal parts of the split (tfds.even_splits). Arguments as in
  `input_pipeline.latents.make_dataset`. Raises FileNotFoundError (with how to place the data)
  when data_dir does not hold the prepared dataset.
  """
  if batch_size <= 0:
    raise ValueError(f"batch_size={batch_size} must be positive (host-local batch).")
  data_dir = os.path.expanduser(data_dir)
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  builder = tfds.builder("cifar10", data_dir=data_dir)
  _require_prepared(builder, data_dir)
  part = tfds.even_splits(split, n=process_count, drop_remainder=False)[process_index]
  ds = tfds.load("cifar10", data_dir=data_dir, split=part, download=False, shuffle_files=shuffle,
                 read_config=tfds.ReadConfig(shuffle_seed=seed + process_index))
  ds = ds.map(_to_batch_structure, num_parallel_calls=tf.data.AUTOTUNE)
  if shuffle:
    ds = ds.shuffle(shuffle_buffer, seed=seed * 1000003 + process_index,
                    reshuffle_each_iteration=True)
  if repeat:
    ds = ds.repeat()
  ds = ds.batch(batch_size, drop_remainder=repeat if drop_remainder is None else drop_remainder)
  return ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


def uint8_image_batches(data_dir: str, split: str = "train",
                        batch_size: int = 500) -> Iterator[np.ndarray]:
  """Every image of `split` once, in order, as uint8 [n, 32, 32, 3] batches (for FID statistics)."""
  data_dir = os.path.expanduser(data_dir)
  builder = tfds.builder("cifar10", data_dir=data_dir)
  _require_prepared(builder, data_dir)
  ds = tfds.load("cifar10", data_dir=data_dir, split=split, download=False, shuffle_files=False)
  ds = ds.map(lambda ex: ex["image"]).batch(batch_size)
  return ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()
