"""The iMF network (mf_jax/models/dit_incontext.py): sizes, rotary pairing, heads, initialisation.

Numerical parity with the official network is in tests/test_imf_golden.py.
"""
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from mf_jax.models import dit_incontext

# Parameter counts of the official modules (Lyy-iiis/imeanflow bf60cd7cb653f6628e59d48034b333c5eba445e2,
# models/imfDiT.py imfDiT_{B,M,L,XL}_2(num_classes=1000, eval=...)), counted under jax.eval_shape
# on a 32x32x4 input. The official eval module keeps the v head's final layer (RMSNorm + linear,
# w + w * 16 + 16 parameters) although its v output is unused; our inference model has no v head.
OFFICIAL_COUNTS = {  # variant: (training module, eval module, eval module's v_final_layer)
    "B/2": (145_596_960, 88_948_256, 13_072),
    "M/2": (230_570_016, 173_921_312, 13_072),
    "L/2": (509_752_352, 409_071_648, 17_424),
    "XL/2": (711_113_760, 610_433_056, 17_424),
}
TINY = dict(variant="B/2", image_size=8, channels=4, num_classes=10, depth=3, hidden_size=16,
            num_heads=2, head_depth=2)


@pytest.mark.parametrize("variant", list(OFFICIAL_COUNTS))
def test_param_counts_match_official(variant):
  train, evaluation, v_final = OFFICIAL_COUNTS[variant]
  assert dit_incontext.count_params(variant, v_head=True) == train
  assert dit_incontext.count_params(variant, v_head=False) == evaluation - v_final


def test_rotary_is_the_complex_rotation_of_interleaved_pairs(x64):
  """Channels (2k, 2k + 1) as the complex number x_2k + i x_2k+1, times exp(i n 10000^(-2k/d))."""
  b, n, heads, d = 2, 24, 3, 8
  x = np.random.RandomState(0).randn(b, n, heads, d)
  got = np.asarray(dit_incontext.rotary_interleaved(jnp.asarray(x)))
  angles = np.outer(np.arange(n), 10000.0 ** (-np.arange(0, d, 2) / d))
  c = (x[..., 0::2] + 1j * x[..., 1::2]) * np.exp(1j * angles)[None, :, None]
  want = np.stack([c.real, c.imag], axis=-1).reshape(x.shape)
  # The angle table is float32 (as the release): angles <= 23 rad carry errors <= 23 * 2^-24.
  np.testing.assert_allclose(got, want, atol=4 * 23 * 2.0 ** -24 * np.abs(x).max())


def _inputs(b=3):
  rng = np.random.RandomState(1)
  x = jnp.asarray(rng.randn(b, 8, 8, 4), jnp.float32)
  scalars = [jnp.asarray(a, jnp.float32) for a in (rng.rand(b), 1 + 7 * rng.rand(b),
                                                   0.5 * rng.rand(b), 0.5 + 0.5 * rng.rand(b))]
  return x, scalars, jnp.asarray([0, 3, 10])


def _randomised(params, key):
  """Every leaf plus N(0, 0.3^2): the zero-initialised gates and output layers take part."""
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree_util.tree_unflatten(
      tree, [p + 0.3 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])


def test_init_is_zero_and_inference_model_is_the_u_path():
  x, (h, omega, t_min, t_max), y = _inputs()
  model = dit_incontext.InContextDiT(**TINY)
  apply = jax.jit(model.apply)
  params = jax.jit(model.init)(jax.random.key(0), x, h, omega, t_min, t_max, y)["params"]
  u, v = apply({"params": params}, x, h, omega, t_min, t_max, y)
  assert u.shape == v.shape == x.shape and not np.any(u) and not np.any(v)

  params = _randomised(params, jax.random.key(1))
  u, v = apply({"params": params}, x, h, omega, t_min, t_max, y)
  u_params = {k: p for k, p in params.items() if not k.startswith("v_")}
  u_only, none = jax.jit(dit_incontext.InContextDiT(**TINY, v_head=False).apply)(
      {"params": u_params}, x, h, omega, t_min, t_max, y)
  assert none is None
  np.testing.assert_array_equal(u_only, u)
  assert float(jnp.abs(u - v).max()) > 0.1  # The heads differ.
  # Each condition reaches both outputs.
  for i, changed in enumerate([h + 0.3, omega + 1.0, t_min + 0.2, t_max - 0.2]):
    args = [h, omega, t_min, t_max]
    args[i] = changed
    u2, v2 = apply({"params": params}, x, *args, y)
    assert float(jnp.abs(u2 - u).max()) > 1e-3
    assert float(jnp.abs(v2 - v).max()) > 1e-3


def _official_init_std(name, shape, width, patch_fan_in):
  """The initial standard deviation of each parameter under the official code's rules
  (models/torch_models.py TorchLinear "scaled_variance", imfDiT token and label tables, the
  patch embedding's xavier-uniform conv): 0 for biases, gates and the output layers, 1 +- 0 for
  RMSNorm scales (returned as None)."""
  if name.endswith("bias") or name.endswith("_scale") or re.search(r"(u|v)_final/", name):
    return 0.0
  if name.endswith("/scale"):
    return None
  if name.startswith("patch_embed"):
    return math.sqrt(2.0 / (patch_fan_in + width))
  if name.endswith("_tokens") or name.startswith("label_embedder"):
    return 1.0 / math.sqrt(width)
  constant = 0.32 if "_block_" in name else 1.0
  return constant / math.sqrt(shape[0])


def test_init_follows_official_rules():
  """Each parameter's empirical std at init within 5 standard errors of the official rule."""
  width = 64
  model = dit_incontext.InContextDiT(**dict(TINY, hidden_size=width, num_heads=2))
  x, (h, omega, t_min, t_max), y = _inputs()
  params = jax.jit(model.init)(jax.random.key(0), x, h, omega, t_min, t_max, y)["params"]
  flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
  # patch 2, labels 1, four scalar embedders 4 each, tokens 5, 5 blocks of 13, two output layers 3.
  assert len(flat) == 2 + 1 + 4 * 4 + 5 + 5 * 13 + 2 * 3
  for name, value in flat.items():
    want = _official_init_std(name, value.shape, width, patch_fan_in=2 * 2 * 4)
    if want is None:
      np.testing.assert_array_equal(value, 1.0, err_msg=name)
    elif want == 0.0:
      np.testing.assert_array_equal(value, 0.0, err_msg=name)
    else:
      got = float(np.sqrt(np.mean(np.square(value))))
      assert abs(got / want - 1) < 5 / math.sqrt(2 * value.size), (name, got, want)
