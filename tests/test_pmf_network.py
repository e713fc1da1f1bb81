"""The pMF network (mf_jax/models/dit_pixel.py): sizes, 2-D rotary layout, bottleneck embedding,
outputs, and parity with the official pmfDiT (tests/golden/pmf_network.npz, written by
scripts/make_pmf_network_golden.py from the official code).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from mf_jax.convert.formats import pmf_official
from mf_jax.errors import ConfigError
from mf_jax.models import dit_incontext, dit_pixel
from mf_jax.objectives import pmf as pmf_objective
import golden_files
from numerics import rel_err

# Both sides float32 with the same operations in a different order (as tests/test_imf_golden.py);
# a wrong name, layout or rotary pair is O(1).
RTOL = 1e-5

# Parameter counts of the official modules, counted by scripts/pmf_param_counts.py under
# jax.eval_shape (pmfDiT_<variant>(num_classes=1000, eval=False / True)): B and L from Lyy-iiis/pMF
# main at 75f6073042c21f7104686261a0c4784db4ede9d1, H from its hsdp branch at
# 51930aa28c66b6d76005dc0954c20ac02d2b7ba2 (SwiGLU width rounded up to a multiple of 8).
OFFICIAL_COUNTS = {  # variant: (image size, training module, inference module)
    "B/16": (256, 175_474_304, 118_234_240),
    "L/16": (256, 511_789_696, 410_320_768),
    "B/32": (512, 179_312_768, 120_300_928),
    "L/32": (512, 516_807_808, 412_977_280),
    "H/16": (256, 1_113_904_640, 955_508_992),
    "H/32": (512, 1_120_397_312, 959_050_240),
}


@pytest.fixture(scope="module")
def golden():
  return golden_files.load("pmf_network.npz")


def tiny_model(golden, **fields):
  g = lambda k: int(golden[f"tiny_{k}"])
  return dit_pixel.PixelDiT(
      variant=f"B/{g('patch_size')}", image_size=g("input_size"), channels=g("in_channels"),
      num_classes=int(golden["num_classes"]), depth=g("depth"), hidden_size=g("hidden_size"),
      num_heads=g("num_heads"), head_depth=g("aux_head_depth"), **fields)


def official_params(golden):
  """The golden official parameters mapped to ours (the converter's table)."""
  return pmf_official.from_official(golden_files.subtree(golden, "param"))


def net_inputs(golden):
  return tuple(jnp.asarray(golden[f"net_{k}"]) for k in ("z", "h", "omega", "t_min", "t_max", "y"))


@pytest.mark.parametrize("variant", list(OFFICIAL_COUNTS))
def test_param_counts_match_official(variant):
  size, train, inference = OFFICIAL_COUNTS[variant]
  assert dit_pixel.count_params(variant, v_head=True, image_size=size) == train
  assert dit_pixel.count_params(variant, v_head=False, image_size=size) == inference


def test_rotary_2d_is_rows_then_columns_on_the_patches_only(x64):
  """Pair k (channels 2k, 2k + 1, as a complex number) of patch (i, j) turns by
  i * 10000^(-4k/d) for k < d/4 and by j * 10000^(-4(k - d/4)/d) after; the prefix is kept."""
  b, prefix, grid, heads, d = 2, 5, 3, 2, 16
  n = prefix + grid * grid
  x = np.random.RandomState(0).randn(b, n, heads, d)
  got = np.asarray(dit_incontext.rotary_interleaved(jnp.asarray(x), grid))
  freqs = 10000.0 ** (-4.0 * np.arange(d // 4) / d)
  rows, cols = np.divmod(np.arange(grid * grid), grid)
  angles = np.concatenate([np.outer(rows, freqs), np.outer(cols, freqs)], axis=1)  # [g*g, d/2]
  c = (x[:, prefix:, :, 0::2] + 1j * x[:, prefix:, :, 1::2]) * np.exp(1j * angles)[None, :, None]
  want = x.copy()
  want[:, prefix:] = np.stack([c.real, c.imag], axis=-1).reshape(b, grid * grid, heads, d)
  np.testing.assert_array_equal(got[:, :prefix], x[:, :prefix])
  # The angle table is float32 (as the official one): angles <= grid - 1 rad, each off by at most
  # that * 2^-24.
  np.testing.assert_allclose(got, want, atol=4 * (grid - 1) * 2.0 ** -24 * np.abs(x).max())


def test_shapes(golden):
  """Bottleneck embedding (p x p conv to 128 channels, 256 above width 1024, then 1 x 1), 3-D
  prefix offsets, position and label tables (the official shapes), and image outputs."""
  model = tiny_model(golden)
  z, h, omega, t_min, t_max, y = net_inputs(golden)
  shapes = jax.eval_shape(model.init, jax.random.key(0), z, h, omega, t_min, t_max, y)["params"]
  flat = {k: v.shape for k, v in traverse_util.flatten_dict(shapes, sep="/").items()}
  w, p, n_patch = 16, 2, 36
  assert flat["patch_embed/reduce/kernel"] == (p, p, 3, 128)
  assert flat["patch_embed/reduce/bias"] == (128,)
  assert flat["patch_embed/expand/kernel"] == (1, 1, 128, w)
  assert flat["pos_embed"] == (1, 20 + n_patch, w)
  assert flat["label_embedder/embedding"] == (1, 11, w)
  assert flat["class_tokens"] == (1, 8, w) and flat["time_tokens"] == (1, 4, w)
  assert flat["u_final/kernel"] == (w, p * p * 3)
  assert flat["shared_block_0/mlp_gate/kernel"] == (w, 42)  # int(16 * 8/3).
  x_u, x_v = jax.eval_shape(model.apply, {"params": shapes}, z, h, omega, t_min, t_max, y)
  assert x_u.shape == x_v.shape == z.shape

  wide = dit_pixel.PixelDiT(variant="H/16", image_size=32, num_classes=10, depth=2, head_depth=1)
  shapes = jax.eval_shape(wide.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)), *(
      jnp.zeros((1,)),) * 4, jnp.zeros((1,), jnp.int32))["params"]
  assert shapes["patch_embed"]["reduce"]["kernel"].shape == (16, 16, 3, 256)
  assert shapes["shared_block_0"]["mlp_gate"]["kernel"].shape == (1280, 3416)  # 3413 -> 3416.


def test_matches_official_network(golden):
  """x_u, x_v of the golden official tiny network (random weights) from its mapped parameters;
  and the official velocities are (z - x) / clip(t, 0.05, 1) of our images."""
  model = tiny_model(golden)
  params = official_params(golden)
  x_u, x_v = jax.jit(model.apply)({"params": params}, *net_inputs(golden))
  assert rel_err(x_u, golden["net_x_u"]) < RTOL
  assert rel_err(x_v, golden["net_x_v"]) < RTOL
  z, t = golden["net_z"], np.clip(golden["net_t"], 0.05, 1.0)[:, None, None, None]
  assert rel_err((z - np.asarray(x_u)) / t, golden["net_u"]) < RTOL
  assert rel_err((z - np.asarray(x_v)) / t, golden["net_v"]) < RTOL

  # The inference model: the same u path without the v blocks and v output layer.
  inference = tiny_model(golden, v_head=False)
  u_params = pmf_official.from_official(golden_files.subtree(golden, "param"), v_head=False)
  assert not any(k.startswith("v_") for k in u_params)
  x_u_only, none = jax.jit(inference.apply)({"params": u_params}, *net_inputs(golden))
  assert none is None
  np.testing.assert_array_equal(x_u_only, x_u)


def test_init_is_zero_and_conditions_reach_both_heads(golden):
  model = tiny_model(golden)
  inputs = net_inputs(golden)
  apply = jax.jit(model.apply)
  params = jax.jit(model.init)(jax.random.key(0), *inputs)["params"]
  x_u, x_v = apply({"params": params}, *inputs)
  assert not np.any(x_u) and not np.any(x_v)  # Zero-initialised output layers.
  assert abs(float(np.std(params["pos_embed"])) / 0.02 - 1) < 0.1
  params = official_params(golden)
  x_u, x_v = apply({"params": params}, *inputs)
  for i in range(1, 6):  # h, omega, t_min, t_max, labels.
    changed = list(inputs)
    changed[i] = (inputs[i] + 1) % 11 if i == 5 else inputs[i] * 0.7 + 0.1
    u2, v2 = apply({"params": params}, *changed)
    assert float(jnp.abs(u2 - x_u).max()) > 1e-3 and float(jnp.abs(v2 - x_v).max()) > 1e-3


def test_build_from_config():
  from configs import imf_digits  # pylint: disable=import-outside-toplevel
  config = imf_digits.get_config()
  config.model.update(name="dit_pixel", variant="B/16", head_depth=8, depth=None,
                      hidden_size=None, num_heads=None)
  config.data.update(image_size=256, channels=3, num_classes=1000)
  assert dit_incontext.param_count(pmf_objective.build_pixel_dit(config)) == OFFICIAL_COUNTS[
      "B/16"][1]
  assert dit_incontext.param_count(pmf_objective.build_pixel_dit(config, v_head=False)) == (
      OFFICIAL_COUNTS["B/16"][2])
  config.model.name = "dit_incontext"
  with pytest.raises(ConfigError, match="model.name='dit_pixel'"):
    pmf_objective.build_pixel_dit(config)
