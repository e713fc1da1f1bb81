"""bf16 compute with fp32 parameters follows the fp32 loss curve on the tiny config."""
import jax
import numpy as np

from mf_jax import sharding as sharding_lib
from test_train import run_steps, tiny_config


def test_bf16_compute_tracks_fp32_loss_curve():
  mesh = sharding_lib.make_mesh(1, jax.devices()[:1])
  curves = {}
  for dtype in ("float32", "bfloat16"):
    config = tiny_config(global_batch_size=32)
    config.model.compute_dtype = dtype
    config.meanflow.adaptive_p = 0.0  # Plain L2: the adaptive weight would pin the loss near 1.
    state, curves[dtype] = run_steps(config, mesh, 8)
    assert all(x.dtype == np.float32 for x in jax.tree_util.tree_leaves(state.params))
  assert curves["float32"][-1] < curves["float32"][0]  # The curve moves, so the match means something.
  np.testing.assert_allclose(curves["bfloat16"], curves["float32"], rtol=0.03)
