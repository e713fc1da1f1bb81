"""2-D toy data: a checkerboard sampler, and fixed data sets of it shaped like 1x1 images with
2 channels, [N, 1, 1, 2], for the drifting toy config."""
import jax
import jax.numpy as jnp
import numpy as np

SIZE = 50_000


def checkerboard(key: jax.Array, n: int) -> jax.Array:
  """Uniform on the 8 cells (i + j even) of a 4x4 board covering [-2, 2]^2; [n, 2] float32."""
  k_cell, k_pos = jax.random.split(key)
  cell = jax.random.randint(k_cell, (n,), 0, 8)
  row = cell // 2
  col = 2 * (cell % 2) + (row % 2)  # Filled cells alternate between rows.
  return jnp.stack([col, row], 1) - 2.0 + jax.random.uniform(k_pos, (n, 2))


def load(split: str = "train"):
  seed = {"train": 0, "eval": 1}[split]
  x = np.asarray(checkerboard(jax.random.key(seed), SIZE))
  return {"x": x.reshape(-1, 1, 1, 2), "label": np.zeros(len(x), np.int32)}
