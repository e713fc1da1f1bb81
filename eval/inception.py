"""Inception-v3 of the FID (the TF graph of 2015-12-05), in Flax linen, channels last.

This is the network behind every published FID: the 2015-12-05 TensorFlow graph as ported to PyTorch
by pytorch-fid and torch-fidelity. It differs from torchvision's Inception-v3 in four places, all
reproduced here: 1008 output classes; the average pools inside the Mixed_5*, Mixed_6b-e and Mixed_7b
blocks exclude the zero padding from the count (TF's "SAME" average pool); the pool branch of the
last block (Mixed_7c) is a 3x3 *max* pool; batch-norm epsilon is 1e-3.

Input: images [N, H, W, 3] in [0, 255] (uint8 or float), any H, W. Preprocessing (`preprocess`):
  "tf1" (default): bilinear resize to 299x299 with TF1's `resize_bilinear` (align_corners=False, no
    half-pixel centres: source coordinate = dst * in / out), then (x - 128) / 128. This is what the
    TF graph does and what torch-fidelity emulates; the parity test runs against torch-fidelity.
  "pytorch_fid": `F.interpolate(bilinear, align_corners=False)` (half-pixel centres, source
    coordinate = (dst + 0.5) * in / out - 0.5, clamped at 0) and x / 127.5 - 1, as pytorch-fid does
    (its FID numbers differ from TF's by a small amount because of this).
Neither resize antialiases, unlike `jax.image.resize`, so neither is `jax.image.resize`.

Output: dict with "pool" [N, 2048] (FID features), "logits_unbiased" [N, 1008] (pool @ W; the
Inception Score of the original TF code and ADM's evaluator uses these) and "logits" [N, 1008]
(with the bias).
"""
import functools
from typing import Any, Callable, Dict, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

INPUT_SIZE = 299
NUM_CLASSES = 1008
POOL_DIM = 2048
BN_EPSILON = 1e-3
PREPROCESS_MODES = ("tf1", "pytorch_fid")


def _resize_taps(in_size: int, out_size: int, mode: str):
  """Per output index: lower/upper source index and the weight of the upper one (numpy, static)."""
  dst = np.arange(out_size, dtype=np.float32)
  # float32 arithmetic on purpose: the references compute the source grid in float32.
  scale = np.float32(in_size / out_size)
  if mode == "tf1":
    src = dst * scale
  else:
    src = np.maximum((dst + np.float32(0.5)) * scale - np.float32(0.5), np.float32(0.0))
  lo = np.floor(src).astype(np.int32)
  lo = np.minimum(lo, in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  return lo, hi, (src - lo.astype(np.float32)).astype(np.float32)


def resize_bilinear(x: jax.Array, size: int = INPUT_SIZE, mode: str = "tf1") -> jax.Array:
  """Bilinear resize of [N, H, W, C] float to [N, size, size, C] without antialiasing.

  Gathers and elementwise lerps only (no matmul), so the result does not depend on the backend's
  matmul precision. Columns are interpolated first, then rows, in the references' order.
  """
  if mode not in PREPROCESS_MODES:
    raise ValueError(f"preprocess={mode!r}: expected one of {PREPROCESS_MODES}.")
  _, h, w, _ = x.shape
  ylo, yhi, dy = _resize_taps(h, size, mode)
  xlo, xhi, dx = _resize_taps(w, size, mode)
  dx = dx[None, None, :, None]
  top, bottom = x[:, ylo], x[:, yhi]
  top = top[:, :, xlo] + (top[:, :, xhi] - top[:, :, xlo]) * dx
  bottom = bottom[:, :, xlo] + (bottom[:, :, xhi] - bottom[:, :, xlo]) * dx
  return top + (bottom - top) * dy[None, :, None, None]


def preprocess_images(images: jax.Array, mode: str = "tf1") -> jax.Array:
  """[N, H, W, 3] in [0, 255] -> [N, 299, 299, 3] float32 in about [-1, 1]."""
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"Inception expects images [N, H, W, 3] (channels last), got {images.shape}.")
  x = resize_bilinear(images.astype(jnp.float32), INPUT_SIZE, mode)
  if mode == "tf1":
    return (x - 128.0) / 128.0
  return x / 127.5 - 1.0


class FrozenBatchNorm(nn.Module):
  """Inference batch norm with its four tensors as parameters (nothing is updated)."""

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    mean = self.param("mean", nn.initializers.zeros, (c,))
    var = self.param("var", nn.initializers.ones, (c,))
    return (x - mean) * (scale * jax.lax.rsqrt(var + BN_EPSILON)) + bias


class ConvBN(nn.Module):
  """Bias-free conv, frozen batch norm, ReLU. `pad` is the symmetric zero padding (rows, cols)."""
  features: int
  kernel: Tuple[int, int]
  stride: int = 1
  pad: Tuple[int, int] = (0, 0)
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    (ph, pw) = self.pad
    x = nn.Conv(self.features, self.kernel, strides=self.stride, padding=((ph, ph), (pw, pw)),
                use_bias=False, precision=self.precision, name="conv")(x)
    return nn.relu(FrozenBatchNorm(name="bn")(x))


def _avg_pool_same(x):
  # TF "SAME" average pooling divides by the number of real (unpadded) inputs in the window.
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_same(x):
  return nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))


def _max_pool_reduce(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


# Kernel shorthands: 1x7 means 1 row by 7 columns; padding keeps the spatial size.
_K = {"1x1": ((1, 1), (0, 0)), "3x3": ((3, 3), (1, 1)), "5x5": ((5, 5), (2, 2)),
      "1x3": ((1, 3), (0, 1)), "3x1": ((3, 1), (1, 0)), "1x7": ((1, 7), (0, 3)),
      "7x1": ((7, 1), (3, 0)), "3x3/2": ((3, 3), (0, 0))}


class MixedBlock(nn.Module):
  """An Inception block described as data.

  branches: sequence of (kind, layers) in output-channel order. kind "chain" applies its layers in
    sequence; "split" applies layers[:-2] in sequence and then layers[-2] and layers[-1] side by
    side, concatenating both (the Mixed_7 3x3 -> 1x3 | 3x1 fan-out); "pool" pools the input (pool
    name in layers[0]) and then applies layers[1:]. A layer is (name, channels, kernel shorthand).
  """
  branches: Sequence[Tuple[str, Sequence[Any]]]
  precision: Any = jax.lax.Precision.HIGHEST

  def _layer(self, spec):
    name, channels, kernel = spec
    size, pad = _K[kernel]
    stride = 2 if kernel.endswith("/2") else 1
    return ConvBN(channels, size, stride, pad, self.precision, name=name)

  @nn.compact
  def __call__(self, x):
    outputs = []
    for kind, layers in self.branches:
      if kind == "pool":
        pool = {"avg": _avg_pool_same, "max": _max_pool_same, "max/2": _max_pool_reduce}[layers[0]]
        h = pool(x)
        for spec in layers[1:]:
          h = self._layer(spec)(h)
        outputs.append(h)
      elif kind == "chain":
        h = x
        for spec in layers:
          h = self._layer(spec)(h)
        outputs.append(h)
      else:  # split
        h = x
        for spec in layers[:-2]:
          h = self._layer(spec)(h)
        outputs += [self._layer(layers[-2])(h), self._layer(layers[-1])(h)]
    return jnp.concatenate(outputs, axis=-1)


def _block_a(pool_channels):  # Mixed_5b/c/d, 35x35.
  return (("chain", [("branch1x1", 64, "1x1")]),
          ("chain", [("branch5x5_1", 48, "1x1"), ("branch5x5_2", 64, "5x5")]),
          ("chain", [("branch3x3dbl_1", 64, "1x1"), ("branch3x3dbl_2", 96, "3x3"),
                     ("branch3x3dbl_3", 96, "3x3")]),
          ("pool", ["avg", ("branch_pool", pool_channels, "1x1")]))


def _block_b():  # Mixed_6a, 35 -> 17.
  return (("chain", [("branch3x3", 384, "3x3/2")]),
          ("chain", [("branch3x3dbl_1", 64, "1x1"), ("branch3x3dbl_2", 96, "3x3"),
                     ("branch3x3dbl_3", 96, "3x3/2")]),
          ("pool", ["max/2"]))


def _block_c(c7):  # Mixed_6b/c/d/e, 17x17, factorised 7x7.
  return (("chain", [("branch1x1", 192, "1x1")]),
          ("chain", [("branch7x7_1", c7, "1x1"), ("branch7x7_2", c7, "1x7"),
                     ("branch7x7_3", 192, "7x1")]),
          ("chain", [("branch7x7dbl_1", c7, "1x1"), ("branch7x7dbl_2", c7, "7x1"),
                     ("branch7x7dbl_3", c7, "1x7"), ("branch7x7dbl_4", c7, "7x1"),
                     ("branch7x7dbl_5", 192, "1x7")]),
          ("pool", ["avg", ("branch_pool", 192, "1x1")]))


def _block_d():  # Mixed_7a, 17 -> 8.
  return (("chain", [("branch3x3_1", 192, "1x1"), ("branch3x3_2", 320, "3x3/2")]),
          ("chain", [("branch7x7x3_1", 192, "1x1"), ("branch7x7x3_2", 192, "1x7"),
                     ("branch7x7x3_3", 192, "7x1"), ("branch7x7x3_4", 192, "3x3/2")]),
          ("pool", ["max/2"]))


def _block_e(pool):  # Mixed_7b (avg pool) and Mixed_7c (max pool: a quirk of the TF graph), 8x8.
  return (("chain", [("branch1x1", 320, "1x1")]),
          ("split", [("branch3x3_1", 384, "1x1"), ("branch3x3_2a", 384, "1x3"),
                     ("branch3x3_2b", 384, "3x1")]),
          ("split", [("branch3x3dbl_1", 448, "1x1"), ("branch3x3dbl_2", 384, "3x3"),
                     ("branch3x3dbl_3a", 384, "1x3"), ("branch3x3dbl_3b", 384, "3x1")]),
          ("pool", [pool, ("branch_pool", 192, "1x1")]))


MIXED_BLOCKS = (
    ("Mixed_5b", _block_a(32)), ("Mixed_5c", _block_a(64)), ("Mixed_5d", _block_a(64)),
    ("Mixed_6a", _block_b()),
    ("Mixed_6b", _block_c(128)), ("Mixed_6c", _block_c(160)), ("Mixed_6d", _block_c(160)),
    ("Mixed_6e", _block_c(192)),
    ("Mixed_7a", _block_d()), ("Mixed_7b", _block_e("avg")), ("Mixed_7c", _block_e("max")),
)


class FIDInceptionV3(nn.Module):
  """images [N, H, W, 3] in [0, 255] -> {"pool": [N, 2048], "logits_unbiased", "logits": [N, 1008]}.
  """
  preprocess: str = "tf1"
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, images):
    x = preprocess_images(images, self.preprocess)
    conv = lambda name, c, k, s=1, p=(0, 0): ConvBN(c, k, s, p, self.precision, name=name)
    x = conv("Conv2d_1a_3x3", 32, (3, 3), 2)(x)  # 149
    x = conv("Conv2d_2a_3x3", 32, (3, 3))(x)  # 147
    x = conv("Conv2d_2b_3x3", 64, (3, 3), 1, (1, 1))(x)
    x = _max_pool_reduce(x)  # 73
    x = conv("Conv2d_3b_1x1", 80, (1, 1))(x)
    x = conv("Conv2d_4a_3x3", 192, (3, 3))(x)  # 71
    x = _max_pool_reduce(x)  # 35
    for name, branches in MIXED_BLOCKS:
      x = MixedBlock(branches, self.precision, name=name)(x)
    pool = jnp.mean(x, axis=(1, 2))
    kernel = self.param("fc_kernel", nn.initializers.lecun_normal(), (POOL_DIM, NUM_CLASSES))
    bias = self.param("fc_bias", nn.initializers.zeros, (NUM_CLASSES,))
    logits_unbiased = jnp.dot(pool, kernel, precision=self.precision)
    return {"pool": pool, "logits_unbiased": logits_unbiased, "logits": logits_unbiased + bias}


def param_shapes(preprocess: str = "tf1") -> Dict[str, Any]:
  """The parameter tree as jax.ShapeDtypeStruct leaves (nothing allocated)."""
  model = FIDInceptionV3(preprocess)
  return jax.eval_shape(model.init, jax.random.key(0),
                        jax.ShapeDtypeStruct((1, 75, 75, 3), jnp.float32))["params"]


def random_inception_params(key: jax.Array) -> Dict[str, Any]:
  """Random but well-scaled parameters (for tests and benchmarks; real FID needs real weights).

  He-normal conv kernels and batch-norm statistics drawn near identity keep the activations O(1)
  through all 94 conv layers, so the pool features are neither zero nor huge, unlike what a
  default init with untouched running statistics would give.
  """
  with_paths, treedef = jax.tree_util.tree_flatten_with_path(param_shapes())
  names = [path[-1].key for path, _ in with_paths]
  leaves = [leaf for _, leaf in with_paths]
  total = sum(int(np.prod(leaf.shape)) for leaf in leaves)
  # Two numpy draws for the whole tree (24M values), sliced per leaf: ~10x faster on CPU than
  # threefry, and deterministic in the key.
  rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
  normal = rng.standard_normal(total, dtype=np.float32)
  uniform = rng.random(total, dtype=np.float32)
  out, offset = [], 0
  for name, leaf in zip(names, leaves):
    shape, size = leaf.shape, int(np.prod(leaf.shape))
    z = normal[offset:offset + size].reshape(shape)
    u = uniform[offset:offset + size].reshape(shape)
    offset += size
    if name in ("kernel", "fc_kernel"):
      out.append(z * np.float32(np.sqrt(2.0 / np.prod(shape[:-1]))))
    elif name == "scale":
      out.append(0.8 + 0.4 * u)
    elif name == "var":
      out.append(0.5 + u)
    else:  # bias, mean, fc_bias
      out.append(0.1 * z)
  return jax.tree_util.tree_unflatten(treedef, out)


@functools.lru_cache(maxsize=None)
def make_apply_fn(preprocess: str = "tf1", precision: Any = jax.lax.Precision.HIGHEST
                  ) -> Callable[..., Dict[str, jax.Array]]:
  """Jitted apply_fn(params, images [N, H, W, 3] in [0, 255]) -> dict of pool / logits.

  Cached, so every caller shares one jit cache (one compile per input shape per process).
  """
  if preprocess not in PREPROCESS_MODES:
    raise ValueError(f"preprocess={preprocess!r}: expected one of {PREPROCESS_MODES}.")
  model = FIDInceptionV3(preprocess, precision)
  return jax.jit(lambda params, images: model.apply({"params": params}, images))


def load_inception(path: str, sha256: Any = "auto", preprocess: str = "tf1"):
  """Loads the FID Inception from a PyTorch state dict file -> (apply_fn, params).

  path: pytorch-fid's pt_inception-2015-12-05-6726825d.pth or torch-fidelity's
  weights-inception-2015-12-05-6726825d.pth (needs torch to read), or the .npz that
  `python -m mf_jax.convert inception` makes from either (no torch needed). sha256: full hex
  digest or prefix to check; "auto" checks the prefix embedded in a torch-hub style file name
  (NAME-HEXPREFIX.pth); None skips.
  """
  # The table (mf_jax/convert/formats/inception.py) takes this network's shapes as an argument,
  # so it imports nothing from eval/ and no import circle forms.
  from mf_jax.convert.formats import inception as inception_format  # pylint: disable=g-import-not-at-top
  params = inception_format.load_flax_params(path, param_shapes(), sha256=sha256)
  return make_apply_fn(preprocess), params


class InceptionFeatures:
  """Feature function for FID: __call__(images) -> pool features [N, 2048] float32 (numpy).

  Runs the jitted network on fixed-size batches (the last one padded), so a stream of any length
  compiles once. `pool_and_logits(images)` also returns the unbiased logits for Inception Score.
  images: [N, H, W, 3] uint8 in [0, 255], or float in [0, 255]; numpy or jax.
  """
  dim = POOL_DIM

  def __init__(self, apply_fn, params, batch_size: int = 100):
    self.apply_fn, self.params, self.batch_size = apply_fn, params, int(batch_size)

  def pool_and_logits(self, images) -> Tuple[np.ndarray, np.ndarray]:
    # jax arrays (e.g. decoded samples already on the accelerator) stay there until the features.
    xp = jnp if isinstance(images, jax.Array) else np
    images = images if xp is jnp else np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"Inception features need images [N, H, W, 3], got {images.shape}.")
    pools, logits = [], []
    for start in range(0, len(images), self.batch_size):
      chunk = images[start:start + self.batch_size]
      n = len(chunk)
      if n < self.batch_size:
        chunk = xp.concatenate([chunk, xp.zeros((self.batch_size - n,) + chunk.shape[1:],
                                                chunk.dtype)])
      out = self.apply_fn(self.params, chunk)
      pools.append(np.asarray(out["pool"])[:n])
      logits.append(np.asarray(out["logits_unbiased"])[:n])
    if not pools:
      return np.zeros((0, POOL_DIM), np.float32), np.zeros((0, NUM_CLASSES), np.float32)
    return np.concatenate(pools), np.concatenate(logits)

  def __call__(self, images) -> np.ndarray:
    return self.pool_and_logits(images)[0]
