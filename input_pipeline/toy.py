"""2-D toy data for the drifting toy config, shaped like 1x1 images with 2 channels: [N, 1, 1, 2]."""
import numpy as np

SIZE = 50_000


def checkerboard(n: int = SIZE, seed: int = 0) -> np.ndarray:
  """Uniform on the 8 cells (i + j even) of a 4x4 board covering [-2, 2]^2; [n, 2] float32."""
  rng = np.random.default_rng(seed)
  cell = rng.integers(0, 8, n)
  row = cell // 2
  col = 2 * (cell % 2) + (row % 2)
  return (np.stack([col, row], 1) - 2.0 + rng.uniform(size=(n, 2))).astype(np.float32)


def load(split: str = "train"):
  seed = {"train": 0, "eval": 1}[split]
  x = checkerboard(seed=seed)
  return {"x": x.reshape(-1, 1, 1, 2), "label": np.zeros(len(x), np.int32)}
