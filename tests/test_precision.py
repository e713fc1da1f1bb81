"""model.compute_dtype="bfloat16": the compiled step really multiplies in bf16 (parameters stay
float32), the network's error is that of bf16 rounding, and training follows the float32 curve.

Tolerances come from bf16's rounding unit u = 2^-8 (8 significant bits): one rounding moves a value
by at most u relative, against 2^-24 for float32.
"""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import input_pipeline
from mf_jax import sharding as sharding_lib
from mf_jax import train_state as ts
from mf_jax import train_step as step_lib
from mf_jax.models.dit import DiT
import numerics
from test_train import run_steps, tiny_config

BF16_UNIT = 2.0 ** -8
# Operand and result types of a StableHLO dot_general / convolution: "(tensor<..xT>, tensor<..xT>)
# -> tensor<..xT>".
OP_TYPES = re.compile(r"stablehlo\.(dot_general|convolution)[^\n]*: \(tensor<[^>]*x(\w+)>, "
                      r"tensor<[^>]*x(\w+)>\) -> tensor<[^>]*x(\w+)>")


def lowered_step_matmul_types(compute_dtype):
  """[(op, lhs type, rhs type, result type)] of every matmul and convolution in the lowered train
  step of the tiny DiT config (lowering only: nothing is compiled), and the parameters' dtypes."""
  config = tiny_config()
  config.model.compute_dtype = compute_dtype
  mesh = sharding_lib.make_mesh(1, jax.devices()[:1])
  model, opt = ts.build_model(config), ts.make_optimizer(config)
  state, shardings = ts.create_sharded_state(config, model, opt, mesh, jax.random.key(0))
  step = step_lib.jit_train_step(step_lib.make_train_step(config, model, opt, mesh=mesh), mesh,
                                 shardings)
  batch = sharding_lib.global_batch(next(input_pipeline.train_iterator(config, 0)), mesh)
  text = step.lower(state, batch).as_text()
  return OP_TYPES.findall(text), {a.dtype for a in jax.tree_util.tree_leaves(state.params)}


@pytest.mark.parametrize("compute_dtype,want", [("bfloat16", "bf16"), ("float32", "f32")])
def test_every_matmul_of_the_step_runs_in_the_compute_dtype(compute_dtype, want):
  """Forward, jvp and backward: the DiT's dot_generals and convolutions take and give
  compute_dtype, except the attention logits q.k, which accumulate in float32 (models/attention.py):
  their float32 results and the matmuls of their gradients run in float32, a fixed handful per
  block. The parameters (and so the optimizer) stay float32."""
  ops, param_dtypes = lowered_step_matmul_types(compute_dtype)
  assert len(ops) > 50  # Two blocks' worth of forward, tangent and gradient matmuls.
  in_compute_dtype = [o for o in ops if set(o[1:]) == {want}]
  logits_path = [o for o in ops if o[3] == "f32" and set(o[1:3]) <= {want, "f32"}]
  assert sorted(in_compute_dtype + logits_path) == sorted(ops) or want == "f32"
  assert len(in_compute_dtype) > 3 * len(ops) // 4, (len(in_compute_dtype), len(ops))
  assert param_dtypes == {np.dtype(np.float32)}


def test_bf16_network_error_is_bf16_rounding(x64):
  """The bf16 DiT's output against a float64 truth: its relative error lies between u / 8 and 8 u.

  Upper: the tiny DiT has ~18 matmul stages in sequence (patch embed, 7 per block, the final
  modulation and projection), each rounding inputs and output (<= 3 u); independent roundings add
  in quadrature, sqrt(3 * 18) u ~ 7 u. Lower: a float32 computation is 2^16 times more accurate
  (measured below at <= 64 float32 units), so an error above u / 8 shows the bf16 path is taken.
  """
  make = lambda dtype, param_dtype=jnp.float32: DiT(
      variant="S/2", depth=2, hidden_size=32, num_heads=2, image_size=8, channels=1,
      num_classes=10, dtype=dtype, param_dtype=param_dtype)
  z = jax.random.normal(jax.random.key(0), (16, 8, 8, 1), jnp.float32)
  t = jax.random.uniform(jax.random.key(1), (16,), jnp.float32)
  r, labels = 0.5 * t, jnp.arange(16) % 11
  params = make(jnp.float32).init(jax.random.key(2), z, (t, t - r), labels)
  # adaLN-Zero starts at an output of zero: perturb every weight so the output is nontrivial.
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.key(3), len(leaves))
  params = tree.unflatten([p + 0.1 * jax.random.normal(k, p.shape, p.dtype)
                           for p, k in zip(leaves, keys)])
  to64 = lambda tree: jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), tree)
  truth = jax.jit(make(jnp.float64, jnp.float64).apply)(to64(params), to64(z), to64((t, t - r)),
                                                         labels)
  err = {dtype: numerics.rel_err(jax.jit(make(dtype).apply)(params, z, (t, t - r), labels), truth)
         for dtype in (jnp.float32, jnp.bfloat16)}
  assert err[jnp.float32] <= 64 * numerics.EPS32, err
  assert BF16_UNIT / 8 <= err[jnp.bfloat16] <= 8 * BF16_UNIT, err


def test_bf16_compute_tracks_fp32_loss_curve():
  """8 steps in bf16 follow the float32 losses to within one bf16 unit, relative.

  The first loss is the same in both (adaLN-Zero: the output starts at exactly zero); after that
  the parameters differ through bf16 gradients, which Adam normalises (m / sqrt(v) is invariant to
  a gradient's scale), so to first order each update moves by at most u relative and the losses,
  dominated by |v|^2 this early, by far less (measured: 1.5e-4 relative, 25 times below).
  """
  mesh = sharding_lib.make_mesh(1, jax.devices()[:1])
  curves = {}
  for dtype in ("float32", "bfloat16"):
    config = tiny_config(global_batch_size=32)
    config.model.compute_dtype = dtype
    config.meanflow.adaptive_p = 0.0  # Plain L2: the adaptive weight would pin the loss near 1.
    _, curves[dtype] = run_steps(config, mesh, 8)
  assert curves["float32"][-1] < curves["float32"][0]  # The curve moves, so the match means something.
  np.testing.assert_allclose(curves["bfloat16"], curves["float32"], rtol=BF16_UNIT)
