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

from input_pipeline import sampler

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


def _example_index(example):
  ident = example.get("id", tf.constant(""))  # "train_16399"
  number = tf.strings.regex_replace(ident, r"^[a-z]+_", "")
  return tf.cond(tf.strings.regex_full_match(number, r"[0-9]+"),
                 lambda: tf.strings.to_number(number, tf.int64), lambda: tf.constant(-1, tf.int64))


def load_split(data_dir: str, split: str = "train") -> Dict[str, np.ndarray]:
  """The whole split in TFDS's fixed file order: image uint8 [N, 32, 32, 3], label int32 [N],
  index int64 [N] (example number within the split from the TFDS id; -1 if absent).

  50,000 images are 150 MB, so every process holds the split in memory and reads examples by
  number (random access without a record format of its own)."""
  data_dir = os.path.expanduser(data_dir)
  builder = tfds.builder("cifar10", data_dir=data_dir)
  _require_prepared(builder, data_dir)
  ds = tfds.load("cifar10", data_dir=data_dir, split=split, download=False, shuffle_files=False)
  ds = ds.map(lambda ex: {"image": ex["image"], "label": tf.cast(ex["label"], tf.int32),
                          "index": _example_index(ex)}).batch(10_000)
  parts = list(ds.as_numpy_iterator())
  return {k: np.concatenate([p[k] for p in parts]) for k in ("image", "label", "index")}


def to_batch(images: np.ndarray, labels: np.ndarray, index: np.ndarray) -> Dict[str, np.ndarray]:
  """uint8 images [B, 32, 32, 3] (+ labels, indices) -> batch dict (module docstring)."""
  x = images.astype(np.float32) / 127.5 - 1.0
  return {"x": x, "x_flip": x[:, :, ::-1].copy(), "label": labels.astype(np.int32),
          "index": index.astype(np.int64)}


def make_dataset(data_dir: str, *, global_batch_size: int, split: str = "train", seed: int = 0,
                 start_step: int = 0, process_index: Optional[int] = None,
                 process_count: Optional[int] = None) -> Iterator[Dict[str, np.ndarray]]:
  """This process's part of every step's batch (module docstring) of CIFAR-10 `split` from a
  local TFDS data_dir, from start_step on; the batch of step s is a pure function of (seed, s)
  (`input_pipeline.sampler`). Raises FileNotFoundError (with how to place the data) when
  data_dir does not hold the prepared dataset.
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  data = load_split(data_dir, split)
  return sampler.batches(
      lambda numbers: to_batch(data["image"][numbers], data["label"][numbers], data["index"][numbers]),
      num_examples=len(data["label"]), global_batch_size=global_batch_size, seed=seed,
      start_step=start_step, process_index=process_index, process_count=process_count)


def uint8_image_batches(data_dir: str, split: str = "train",
                        batch_size: int = 500) -> Iterator[np.ndarray]:
  """Every image of `split` once, in order, as uint8 [n, 32, 32, 3] batches (for FID statistics)."""
  data_dir = os.path.expanduser(data_dir)
  builder = tfds.builder("cifar10", data_dir=data_dir)
  _require_prepared(builder, data_dir)
  ds = tfds.load("cifar10", data_dir=data_dir, split=split, download=False, shuffle_files=False)
  ds = ds.map(lambda ex: ex["image"]).batch(batch_size)
  return ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()
