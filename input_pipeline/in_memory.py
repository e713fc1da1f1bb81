"""Batches of in-memory arrays with index-based, stateless shuffling (tf.data, or numpy without TF).

The example at global position i (counting every example drawn since step 0) is
index_shuffle(i mod n, seed=(seed, i div n)): a fresh permutation per epoch that depends on nothing
but the seed. Starting at any step therefore reproduces exactly the batches an uninterrupted run
would have drawn, and each process takes its own contiguous slice of every global batch.

With TensorFlow installed the permutation is TF's RandomIndexShuffle (the README's runs). Without it
the numpy reader draws each epoch's permutation from a Philox generator keyed by (seed, epoch):
equally stateless and resumable, but a different sequence of batches, so a run must not switch
between the two mid-way (the log says which one runs).
"""
from typing import Dict, Iterator

from absl import logging
import numpy as np

try:
  import tensorflow as tf
except ImportError:  # A GPU host with only jax[cuda]: the numpy reader below.
  tf = None


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
  if tf is None:
    logging.info("TensorFlow absent: in-memory batches from the numpy index shuffle.")
    return numpy_batches(arrays, global_batch_size=global_batch_size, seed=seed,
                         start_step=start_step, process_index=process_index, local=local)
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


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
  """The numpy reader's order of epoch `epoch`: a permutation of range(n) fixed by (seed, epoch)."""
  return np.random.Generator(np.random.Philox(key=[seed % 2**64, epoch])).permutation(n)


def numpy_batches(arrays: Dict[str, np.ndarray], *, global_batch_size: int, seed: int,
                  start_step: int, process_index: int, local: int) -> Iterator[Dict[str, np.ndarray]]:
  """batch_iterator without TensorFlow: same positions, numpy's epoch permutations."""
  n = len(next(iter(arrays.values())))
  cache = {}
  def order(epoch):
    if epoch not in cache:
      cache.clear() if len(cache) > 2 else None
      cache[epoch] = epoch_permutation(n, seed, epoch)
    return cache[epoch]
  step = start_step
  while True:
    pos = step * global_batch_size + process_index * local + np.arange(local, dtype=np.int64)
    epochs = pos // n
    idx = np.empty(local, np.int64)
    for e in np.unique(epochs):
      idx[epochs == e] = order(int(e))[pos[epochs == e] % n]
    yield {k: v[idx] for k, v in arrays.items()}
    step += 1
