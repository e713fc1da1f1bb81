"""sha256 of files, read in blocks (weights, record shards, manifests and checkpoints are checked
with it), and of a whole training state's bytes (the reproducibility evidence a run logs)."""
import hashlib


def file_sha256(path: str, block_size: int = 1 << 22) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(block_size), b""):
      digest.update(block)
  return digest.hexdigest()


def state_sha256(tree) -> str:
  """sha256 over every leaf of a pytree (the train state: step, params, EMA, optimizer, aux), in
  tree order, each as its path, dtype, shape and raw bytes.

  Unlike a float sum of the parameters, any changed bit of any leaf changes it (a swap of two
  weights, an EMA or Adam moment off by one ulp). PRNG keys enter as their key data; arrays spread
  over several processes are gathered first, so every process logs the same digest.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      leaf = multihost_utils.process_allgather(leaf, tiled=True)
    array = np.ascontiguousarray(np.asarray(jax.device_get(leaf)))
    digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype.str}|{array.shape}|".encode())
    digest.update(array.tobytes())
  return digest.hexdigest()
