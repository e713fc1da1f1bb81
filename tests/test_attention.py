"""Attention implementations: which kernel each call takes, equal values and gradients, and float32
accumulation of bf16 logits.

cuDNN cannot run on CPU, so a stand-in takes its place here: a custom_vjp (as cuDNN's flash
attention is) around the XLA kernel. Like the real one it has no forward-mode derivative, so a jvp
that reached it would raise; and its values and gradients are XLA's, so a training loss through it
must match the einsum path's.
"""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.base import meanflow_config
from mf_jax import meanflow
from mf_jax.models import attention, dit
import numerics


@jax.custom_vjp
def _cudnn_stand_in(q, k, v):
  return attention.xla_attention(q, k, v)


def _stand_in_fwd(q, k, v):
  out, vjp = jax.vjp(attention.xla_attention, q, k, v)
  return out, (q, k, v)


def _stand_in_bwd(residuals, ct):
  return jax.vjp(attention.xla_attention, *residuals)[1](ct)


_cudnn_stand_in.defvjp(_stand_in_fwd, _stand_in_bwd)


@pytest.fixture
def cpu_cudnn(monkeypatch):
  """The stand-in as the "cudnn" kernel; it takes float32, so the bf16 requirement is lifted."""
  monkeypatch.setitem(attention.KERNELS, "cudnn", _cudnn_stand_in)
  monkeypatch.setattr(attention, "NEEDS_HALF_PRECISION", ())


def _tiny(**kw):
  base = dict(variant="S/2", depth=2, hidden_size=32, num_heads=2, image_size=8, channels=3,
              num_classes=5)
  return dit.DiT(**dict(base, **kw))


def _guided_config():
  cfg = meanflow_config()
  cfg.num_classes = 5
  cfg.r_neq_t_ratio = 0.5  # Half the rows take the jvp, half a plain forward.
  cfg.guidance_omega, cfg.guidance_kappa = 2.0, 0.5  # Guidance adds inference calls.
  return cfg


def _loss_and_grad(model, params, x, labels):
  """The guided MeanFlow loss and its gradient, with fixed draws (4 rows: 2 with r != t)."""
  cfg = _guided_config()
  r = jnp.array([0.1, 0.4, 0.5, 0.8], x.dtype)
  t = jnp.array([0.6, 0.4, 0.9, 0.8], x.dtype)
  e = jax.random.normal(jax.random.key(3), x.shape, x.dtype)
  dropped = jnp.array([False, False, True, False])
  def loss(p):
    u_fn = lambda z, r_, t_, y: model.apply(p, z, (t_, t_ - r_), y)
    return meanflow.meanflow_loss_from_draws(u_fn, x, labels, r, t, e, dropped, cfg)[0]
  return jax.value_and_grad(loss)(params)


def _inputs():
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
  labels = jnp.array([1, 2, 3, 4])
  t = jnp.full((4,), 0.5)
  params = _tiny().init(jax.random.key(1), x, (t, t), labels)
  params = jax.tree_util.tree_map(lambda p: p + 0.05, params)  # Leave the zero-init point.
  return params, x, labels


@pytest.mark.parametrize("remat", [False, True])
def test_cudnn_choice_keeps_the_jvp_on_xla_and_matches_einsum(cpu_cudnn, remat):
  """Every call outside the jvp takes cuDNN, the jvp's call takes XLA, and the loss and gradient
  are as accurate as the einsum path's against a float64 truth (tests/README.md, form 2)."""
  params, x, labels = _inputs()
  with attention.recording() as kernels:
    got = _loss_and_grad(_tiny(attention_impl="cudnn", remat=remat), params, x, labels)
  # Per model call, one entry per block (depth 2). Call order in meanflow_loss: guidance on the
  # r != t rows (conditional, null) and the null call on the r = t rows; the jvp on the r != t
  # rows; the plain forward on the r = t rows.
  calls = [kernels[i:i + 2] for i in range(0, len(kernels), 2)]
  assert [c[0] for c in calls] == ["cudnn", "cudnn", "cudnn", "xla", "cudnn"], kernels
  assert all(c[0] == c[1] for c in calls), kernels

  plain = _loss_and_grad(_tiny(), params, x, labels)
  with jax.enable_x64(True):
    to64 = lambda tree: jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), tree)
    truth = _loss_and_grad(_tiny(dtype=jnp.float64, param_dtype=jnp.float64), to64(params),
                           to64(x), labels)
  numerics.assert_as_accurate(got[0], plain[0], truth[0], what="cudnn-choice loss")
  numerics.assert_as_accurate(got[1], plain[1], truth[1], what="cudnn-choice gradient")


def test_the_stand_in_like_cudnn_refuses_a_jvp(cpu_cudnn):
  """Outside forward_mode() a jvp through "cudnn" reaches the custom_vjp and fails: the selection
  above is what keeps MeanFlow's jvp working."""
  params, x, labels = _inputs()
  model = _tiny(attention_impl="cudnn")
  f = lambda t: model.apply(params, x, (t, t), labels)
  t = jnp.full((4,), 0.5)
  with pytest.raises(TypeError, match="custom_vjp"):
    jax.jvp(f, (t,), (jnp.ones_like(t),))
  with attention.forward_mode():
    jax.jvp(f, (t,), (jnp.ones_like(t),))


def test_cudnn_needs_bf16_activations():
  with pytest.raises(ValueError, match=r"attention_impl='cudnn' needs bf16"):
    _tiny(attention_impl="cudnn").dims()
  _tiny(attention_impl="cudnn", dtype=jnp.bfloat16).dims()


def _dot_signatures(fn, *args):
  """(operand types, result type) of every stablehlo.dot_general in fn's lowered text."""
  text = jax.jit(fn).lower(*args).as_text()
  return re.findall(r"stablehlo\.dot_general .*: \(tensor<([^>]*)>, tensor<([^>]*)>\) -> "
                    r"tensor<([^>]*)>", text)


def test_bf16_logits_accumulate_in_float32():
  """In bf16 the q.k product must return float32 logits (not bf16 logits cast up afterwards)."""
  q = jnp.ones((2, 6, 3, 8), jnp.bfloat16)
  dots = _dot_signatures(attention.einsum_attention, q, q, q)
  assert len(dots) == 2, dots
  logits = [d for d in dots if d[2].startswith("2x3x6x6")]  # [B, heads, N, N]
  assert logits == [("2x6x3x8xbf16", "2x6x3x8xbf16", "2x3x6x6xf32")], dots


def test_matmul_precision_bfloat16_rounds_operands_and_keeps_float32_storage():
  """matmul_precision="bfloat16": every matmul of the DiT takes bf16 operands and returns float32,
  parameters and activations stay float32; "default" leaves every matmul in float32."""
  params, x, labels = _inputs()
  t = jnp.full((4,), 0.5)
  for precision, operand in (("bfloat16", "bf16"), ("default", "f32")):
    model = _tiny(matmul_precision=precision)
    dots = _dot_signatures(lambda p, z: model.apply(p, z, (t, t), labels), params, x)
    assert len(dots) >= 2 * 6 + 4, dots  # qkv, q.k, w.v, proj, adaLN, 2 MLP per block, heads...
    assert {(a.split("x")[-1], b.split("x")[-1], c.split("x")[-1]) for a, b, c in dots} == {
        (operand, operand, "f32")}, (precision, dots)
    assert model.apply(params, x, (t, t), labels).dtype == jnp.float32


def test_bf16_dot_equals_float64_product_of_rounded_operands():
  """Independent truth: the bf16-operand matmul is the exact product of the bf16-rounded operands,
  up to float32 accumulation (k = 64 terms of size <= 16: error << 64 * 16 * eps32)."""
  a = jax.random.normal(jax.random.key(0), (5, 64)) * 2
  b = jax.random.normal(jax.random.key(1), (64, 7)) * 2
  dot = attention.MATMUL_PRECISIONS["bfloat16"][0]
  got = dot(a, b, (((1,), (0,)), ((), ())))
  rounded = lambda m: np.asarray(m.astype(jnp.bfloat16).astype(jnp.float32), np.float64)
  want = rounded(a) @ rounded(b)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=0, atol=64 * 16 * numerics.EPS32)
  assert np.abs(np.asarray(a, np.float64) @ np.asarray(b, np.float64) - want).max() > 1e-3


def test_modern_dit_kernels_match_its_einsum_attention(cpu_cudnn):
  """The Drifting generator (ModernDiT): "xla" and "cudnn" (every call) compute its einsum
  attention's output to float32 accuracy against the float64 einsum path."""
  from mf_jax.models.dit_modern import ModernDiT  # pylint: disable=import-outside-toplevel
  kw = dict(variant="B/2", depth=1, hidden_size=32, num_heads=2, image_size=8, channels=3,
            num_classes=5, condition_names=("alpha",), cls_tokens=2, noise_classes=4,
            noise_coords=2)
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  alpha, labels = jnp.array([1.0, 2.0]), jnp.array([1, 2])
  params = ModernDiT(**kw).init(jax.random.key(1), x, (alpha,), labels)
  params = jax.tree_util.tree_map(lambda p: p + 0.05, params)
  apply = lambda impl, p=params, z=x, dtype=jnp.float32: ModernDiT(
      **kw, attention_impl=impl, dtype=dtype, param_dtype=dtype).apply(p, z, (alpha,), labels)
  plain = apply("einsum")
  with jax.enable_x64(True):
    to64 = lambda tree: jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), tree)
    truth = apply("einsum", to64(params), to64(x), jnp.float64)
  with attention.recording() as kernels:
    for impl in ("xla", "cudnn"):
      numerics.assert_as_accurate(apply(impl), plain, truth, what=f"ModernDiT {impl}")
  assert kernels == ["xla", "cudnn"]
