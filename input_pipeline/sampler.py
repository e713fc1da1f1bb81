"""Which examples each step reads: a pure function of (seed, epoch, step), for any record source.

Global position p counts every example drawn since step 0: step s reads positions
s * G .. s * G + G - 1 (G = global batch size). Position p is example perm_e(p mod n) of epoch
e = p div n, where perm_e is a permutation of [0, n) computed per index (a keyed Feistel network
with cycle walking), keyed by (seed, e) only. So:
  - each epoch draws every example exactly once, in a new order;
  - the examples of a step depend on nothing but (seed, n, G, step): a run resumed at any step, on
    any number of processes, reads exactly what the uninterrupted run read there - the checkpoint's
    step is the whole data position;
  - process i of P reads only positions [i * G/P, (i + 1) * G/P) of each global batch, which
    `sharding.global_batch` assembles back in process order.
Batches are gathered by numpy in two prefetching threads, not through tf.data (nor Grain): a gather
by index from memory or a memmap needs no graph, and its copies release the GIL.
"""
import collections
import sys
from concurrent import futures
from typing import Callable, Dict, Iterator, Optional

import numpy as np

ROUNDS = 6
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
  """splitmix64's finaliser: a bijective scramble of uint64 words (wrapping arithmetic)."""
  x = (x ^ (x >> np.uint64(30))) * _M1
  x = (x ^ (x >> np.uint64(27))) * _M2
  return x ^ (x >> np.uint64(31))


def permute(k: np.ndarray, n: int, seed: int, epoch: int) -> np.ndarray:
  """perm_(seed, epoch)(k) for int64 k in [0, n): a bijection of [0, n) evaluated per element."""
  k = np.asarray(k, np.int64)
  if n <= 1:
    return np.zeros_like(k)
  half = max(1, -(-int(n - 1).bit_length() // 2))  # 2 * half bits cover [0, n)
  mask = np.uint64((1 << half) - 1)
  keys = np.random.SeedSequence([seed % 2**63, epoch]).generate_state(ROUNDS, np.uint64)

  def feistel(x):
    left, right = x >> np.uint64(half), x & mask
    with np.errstate(over="ignore"):
      for key in keys:
        left, right = right, left ^ (_mix(right ^ key) & mask)
    return (left << np.uint64(half)) | right

  x = k.astype(np.uint64)
  out = feistel(x)
  # Cycle walking: the Feistel network permutes [0, 4^half) (< 4n); re-apply it to values >= n until
  # they land in [0, n), which keeps the map a bijection of [0, n).
  todo = np.flatnonzero(out >= np.uint64(n))
  while todo.size:
    out[todo] = feistel(out[todo])
    todo = todo[out[todo] >= np.uint64(n)]
  return out.astype(np.int64)


def step_indices(step: int, *, num_examples: int, global_batch_size: int, seed: int,
                 process_index: int = 0, process_count: int = 1) -> np.ndarray:
  """Example numbers int64 [global_batch_size / process_count] that this process reads at `step`."""
  if global_batch_size % process_count:
    raise ValueError(f"train.global_batch_size={global_batch_size} must be divisible by the "
                     f"process count {process_count}.")
  if num_examples <= 0:
    raise ValueError("the data set holds no examples.")
  local = global_batch_size // process_count
  pos = (np.int64(step) * global_batch_size + process_index * local
         + np.arange(local, dtype=np.int64))
  epoch, k = pos // num_examples, pos % num_examples
  out = np.empty_like(pos)
  for e in np.unique(epoch):
    where = epoch == e
    out[where] = permute(k[where], num_examples, seed, int(e))
  return out


def batches(read: Callable[[np.ndarray], Dict[str, np.ndarray]], *, num_examples: int,
            global_batch_size: int, seed: int, start_step: int = 0, process_index: int = 0,
            process_count: int = 1, prefetch: int = 3, workers: int = 2,
            augment: Optional[Callable[[Dict[str, np.ndarray], int], Dict[str, np.ndarray]]] = None
            ) -> Iterator[Dict[str, np.ndarray]]:
  """This process's batch of every step from start_step on: read(step_indices(step, ...)).

  `read` maps example numbers [k] to a dict of numpy arrays [k, ...]; it runs `prefetch` steps
  ahead in `workers` threads (numpy copies release the GIL), and its errors surface in order.
  `augment(batch, step)`, if given, runs in the same worker on the batch read: random
  augmentation keyed by (seed, step) keeps a resumed run exact.
  """
  kw = dict(num_examples=num_examples, global_batch_size=global_batch_size, seed=seed,
            process_index=process_index, process_count=process_count)
  step_indices(start_step, **kw)  # argument errors now, not in a worker

  def read_step(step):
    batch = read(step_indices(step, **kw))
    return batch if augment is None else augment(batch, step)

  def generate():
    pool = futures.ThreadPoolExecutor(workers, thread_name_prefix="sampler")
    pending, step = collections.deque(), start_step
    try:
      while True:
        while len(pending) < prefetch:
          pending.append(pool.submit(read_step, step))
          step += 1
        yield pending.popleft().result()
    finally:
      if not sys.is_finalizing():  # At interpreter exit the pool's module may be gone.
        pool.shutdown(wait=False, cancel_futures=True)
  return generate()
