"""Device-resident per-class queues of real samples, so a step can draw N_pos positives per class.

The queues are one array [num_classes, queue_len, *sample_shape] plus, per class, the slot of the
next write and the number of stored samples. Each class's row is a ring buffer: `push` writes new
samples after the newest ones and, once the row is full, overwrites the oldest (first in, first out),
so a row always holds the most recent `queue_len` samples of its class. `draw` picks samples of the
requested classes uniformly at random among the stored ones, without replacement while there are
enough. All functions are pure and jit-able; the trainer refills the queues from the data pipeline
(push every incoming batch) and should wait until `ready` before the first step.

A queue with one row (num_classes = 1) fed through `push_any` is the unconditional bank: the most
recent real samples of any class, from which guidance negatives are drawn.

On a mesh (`shardings`) the samples are split over all devices along an axis of the sample itself
(image rows first), so 1000 classes are held once per mesh, not once per device, and every device
holds a slice of every stored sample: a push writes and a draw reads each device's own slice, and
the one all-to-all that regroups the result by example (push) or by class (draw) sends 1/N of its
bytes per device. Split by class or slot instead, a draw is a masked read on every device summed
across devices: an all-reduce of the whole draw [N_c, num, *sample_shape] on each device (12.9 GB
per step, 24x the parameter bytes, for the pixel SOTA config at 64 chips; benchmarks/RESULTS.md).
Only when the device count divides no sample axis is the class or slot axis split (or none).

Storage: float32, or uint8 for 8-bit pixel data (x = v / 127.5 - 1 with v in 0..255, as the pixel
and CIFAR-10 pipelines make it): a 4x smaller bank (12.6 -> 3.1 GB per chip for the pixel SOTA
configs on 8 chips). A push stores v = round(127.5 (x + 1)), which recovers every level exactly;
a draw returns (v - 127.5) / 127.5 (`pixel_values`), which differs from the pipeline's float32
value by at most 2^-24 (each rounds the same real number to float32 in its own way; half an ulp at
1). Values off that grid would be rounded to it: config_checks allows uint8 only for those data
sets.
"""
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mf_jax import sharding as sharding_lib

Array = jax.Array

STORAGE_DTYPES = {"float32": jnp.float32, "uint8": jnp.uint8}


def pixel_levels(x: Array) -> Array:
  """x in [-1, 1] -> uint8 v, the nearest level of x = v / 127.5 - 1."""
  return jnp.clip(jnp.round((x.astype(jnp.float32) + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def pixel_values(v: Array) -> Array:
  """uint8 levels -> float32 (v - 127.5) / 127.5, within 2^-24 of the pipelines' v / 127.5 - 1.

  One exact subtraction and one rounded product, so every backend gives the same bits (a division
  by 127.5 would not: XLA rewrites it as a product by the reciprocal, others may not). Not a table
  lookup: on TPU a gather's per-element index array is laid out padded (64 GiB per chip for the
  pixel SOTA draw)."""
  return (v.astype(jnp.float32) - 127.5) * np.float32(1 / 127.5)


class ClassQueues(NamedTuple):
  samples: Array    # [num_classes, queue_len, *sample_shape]
  write_pos: Array  # [num_classes] int32: slot of the next write (the oldest sample once full).
  count: Array      # [num_classes] int32: stored samples, at most queue_len.

  def layout(self, mesh: Mesh) -> "ClassQueues":
    """Their shardings in a train state (train_state.state_shardings asks aux entries this)."""
    return shardings(mesh, self)


def init(num_classes: int, queue_len: int, sample_shape: Sequence[int],
         dtype=jnp.float32) -> ClassQueues:
  """Empty queues storing samples as `dtype`: float32, or uint8 for 8-bit pixels (see above)."""
  if num_classes < 1 or queue_len < 1:
    raise ValueError(f"class queues need num_classes >= 1 and queue_len >= 1, got {num_classes} and "
                     f"{queue_len}.")
  return ClassQueues(jnp.zeros((num_classes, queue_len) + tuple(sample_shape), dtype),
                     jnp.zeros((num_classes,), jnp.int32), jnp.zeros((num_classes,), jnp.int32))


def push(queues: ClassQueues, samples: Array, labels: Array) -> ClassQueues:
  """Appends samples [B, *sample_shape] with labels [B] in batch order.

  Samples with a label outside [0, num_classes) are skipped (use -1 to pad a batch). When one push
  brings more than queue_len samples of a class, the last queue_len of them are kept.
  """
  num_classes, queue_len = queues.samples.shape[:2]
  if samples.shape[1:] != queues.samples.shape[2:]:
    raise ValueError(f"push: samples have shape {samples.shape[1:]} per sample, the queues hold "
                     f"{queues.samples.shape[2:]}.")
  labels = labels.astype(jnp.int32)
  valid = (labels >= 0) & (labels < num_classes)
  onehot = (labels[:, None] == jnp.arange(num_classes)[None, :]) & valid[:, None]  # [B, K]
  added = jnp.sum(onehot, axis=0, dtype=jnp.int32)  # [K]
  safe = jnp.where(valid, labels, 0)
  # Rank of each sample among the earlier samples of its class in this batch.
  rank = jnp.take_along_axis(jnp.cumsum(onehot, axis=0, dtype=jnp.int32), safe[:, None], 1)[:, 0] - 1
  # Samples that a later sample of the same push would overwrite are dropped, so no two writes
  # share a slot (the order of duplicate scatter writes is unspecified).
  keep = valid & (rank >= added[safe] - queue_len)
  slot = (queues.write_pos[safe] + rank) % queue_len
  row = jnp.where(keep, safe, num_classes)  # Out of range: dropped by the scatter.
  stored = (pixel_levels(samples) if queues.samples.dtype == jnp.uint8
            else samples.astype(queues.samples.dtype))
  new = queues.samples.at[row, slot].set(stored, mode="drop")
  return ClassQueues(new, (queues.write_pos + added) % queue_len,
                     jnp.minimum(queues.count + added, queue_len))


def push_any(queues: ClassQueues, samples: Array, labels: Array) -> ClassQueues:
  """push into a one-row queue regardless of class: every sample with a label >= 0 is kept."""
  return push(queues, samples, jnp.where(labels >= 0, 0, -1))


def shardings(mesh: Mesh, queues: ClassQueues) -> ClassQueues:
  """NamedShardings for queues (arrays or ShapeDtypeStructs): samples spread over all devices
  along the first sample axis the device count divides (see the module docstring)."""
  sample_axes = tuple(range(2, len(queues.samples.shape)))
  spec = sharding_lib.spread_spec(queues.samples.shape, mesh, dims=sample_axes + (0, 1))
  replicated = NamedSharding(mesh, P())
  return ClassQueues(NamedSharding(mesh, spec), replicated, replicated)


def draw(queues: ClassQueues, key: Array, classes: Array, num: int) -> Array:
  """num samples of each of the given classes [N_c] -> [N_c, num, *sample_shape] (float32 when
  stored as uint8).

  Uniform without replacement among the stored samples of the class; if fewer than num are stored,
  the random order repeats (samples appear more than once). A class with no samples yields zeros:
  check `ready` first.
  """
  queue_len = queues.samples.shape[1]
  classes = classes.astype(jnp.int32)
  count = queues.count[classes]  # [N_c]
  # Age 0 is the newest sample; ages < count are stored. A random order of the stored ages first.
  u = jax.random.uniform(key, (classes.shape[0], queue_len))
  order = jnp.argsort(jnp.where(jnp.arange(queue_len)[None] < count[:, None], u, 2.0), axis=1)
  picks = jnp.arange(num)[None, :] % jnp.maximum(count, 1)[:, None]
  age = jnp.take_along_axis(order, picks, axis=1)  # [N_c, num]
  slot = (queues.write_pos[classes][:, None] - 1 - age) % queue_len
  out = queues.samples[classes[:, None], slot]
  if out.dtype == jnp.uint8:
    out = pixel_values(out)
  empty = (count == 0).reshape((-1, 1) + (1,) * (out.ndim - 2))
  return jnp.where(empty, jnp.zeros_like(out), out)


def ready(queues: ClassQueues, min_count: int) -> Array:
  """True when every class holds at least min_count samples (scalar bool)."""
  return jnp.all(queues.count >= min_count)


def sample_classes(key: Array, num_classes: int, num: int) -> Array:
  """num distinct classes drawn uniformly, [num] int32."""
  if num > num_classes:
    raise ValueError(f"cannot draw {num} distinct classes from {num_classes}; lower the number of "
                     "classes per step.")
  return jax.random.choice(key, num_classes, (num,), replace=False).astype(jnp.int32)
