"""tf.data over in-memory arrays with index-based, stateless shuffling.

The example at global position i (counting every example drawn since step 0) is
index_shuffle(i mod n, seed=(seed, i div n)): a fresh permutation per epoch that depends on nothing
but the seed. Starting at any step therefore reproduces exactly the batches an uninterrupted run
would have drawn, and each process takes its own contiguous slice of every global batch.
"""
from typing import Dict, Iterator

import numpy as np
import tensorflow as tf


def batch_iterator(arrays: Dict[str, np.ndarray], *, global_batch_size: int, seed: int,
                   start_step: int = 0, process_index: int = 0,
                   process_count: int = 1) -> Iterator[Dict[str, np.ndarray]]:
  """Yields this process's part ([global_batch_size / process_count, ...]) of each global batch."""
  n = len(next(iter(arrays.values())))
  if global_batch_size % process_count:
    raise ValueError(f"train.global_batch_size={global_batch_size} must be divisible by the "
                     f"process count {process_count}.")
  if global_batch_size > n:
    raise ValueError(f"train.global_batch_size={global_batch_size} exceeds the {n} examples of the "
                     "data set; use a smaller batch.")
  local = global_batch_size // process_count
  tensors = {k: tf.constant(v) for k, v in arrays.items()}

  def gather(step):
    pos = step * global_batch_size + process_index * local + tf.range(local, dtype=tf.int64)
    # A batch spans at most two epochs (batch <= n). The index shuffle mixes poorly for small raw
    # seeds, so each epoch's seed is first scrambled by a stateless Philox draw.
    first = pos[0] // n
    epoch_seed = lambda e: tf.random.stateless_uniform([3], seed=tf.stack([seed, e]), minval=None,
                                                       maxval=None, dtype=tf.int64)
    seeds = tf.where((pos // n == first)[:, None], epoch_seed(first)[None],
                     epoch_seed(first + 1)[None])
    # The raw op takes one seed per index; the public wrapper only pads a single [2] seed.
    idx = tf.raw_ops.RandomIndexShuffle(index=pos % n, seed=seeds, max_index=tf.constant(n - 1, tf.int64))
    return {k: tf.gather(t, idx) for k, t in tensors.items()}

  ds = tf.data.Dataset.range(start_step, np.iinfo(np.int64).max)
  ds = ds.map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.prefetch(2).as_numpy_iterator()
