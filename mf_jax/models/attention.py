"""Softmax attention implementations for the DiTs, and which one each call takes.

Every implementation maps q, k, v [B, N, heads, head_dim] to [B, N, heads, head_dim].
- "einsum": plain ops; jvp-friendly everywhere and exact in float64.
- "xla": jax.nn.dot_product_attention(implementation="xla"), XLA's own formulation (never cuDNN).
- "cudnn": cuDNN flash attention (jax.nn.dot_product_attention(implementation="cudnn"); GPU only,
  bf16/fp16 inputs). It is a custom_vjp, so it has no forward-mode derivative: calls traced inside
  `forward_mode()` (MeanFlow's jax.jvp) take "xla" instead, with the same parameters. Every other
  call (the r = t rows' forward and backward, guidance, drifting generators, sampling) takes cuDNN.

The choice is made while tracing, so it holds for remat'ed blocks and jitted steps alike.
"""
import contextlib
import math
import threading

import jax
import jax.numpy as jnp


def accumulation_dtype(dtype):
  """float32 for bf16/fp16/fp32 inputs; float64 stays float64 (x64 exactness tests)."""
  return jnp.promote_types(dtype, jnp.float32)


def einsum_attention(q, k, v, dot_general=jax.lax.dot_general):
  """Softmax attention from plain ops, with logits and softmax in at least float32.

  The q.k product accumulates in float32 (preferred_element_type): bf16 logits would round before
  the softmax. `dot_general` lets a model run the two products with bf16 operands (matmul_precision).
  """
  acc = accumulation_dtype(q.dtype)
  scale = 1.0 / math.sqrt(q.shape[-1])
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=acc,
                      _dot_general=dot_general)
  weights = jax.nn.softmax(logits * scale, axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v, _dot_general=dot_general)


def xla_attention(q, k, v):
  """jax.nn.dot_product_attention's XLA path: logits and softmax in float32."""
  return jax.nn.dot_product_attention(q, k, v, implementation="xla")


def cudnn_attention(q, k, v):
  """cuDNN flash attention (GPU, bf16/fp16 inputs); a custom_vjp, so not forward-differentiable."""
  return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")


# The functions behind the names. Tests may swap "cudnn" for a custom_vjp stand-in on CPU.
KERNELS = {"einsum": einsum_attention, "xla": xla_attention, "cudnn": cudnn_attention}
# model.attention_impl values -> what they run outside a jvp and inside one.
IMPLS = {"einsum": ("einsum", "einsum"), "xla": ("xla", "xla"), "cudnn": ("cudnn", "xla")}
NEEDS_HALF_PRECISION = ("cudnn",)  # Implementations whose inputs must be bf16 or fp16.

_local = threading.local()


@contextlib.contextmanager
def forward_mode():
  """Marks the attention calls traced inside as forward-mode (jax.jvp) calls.

  Wrap every jax.jvp through a model in it: "cudnn" then traces its jvp-safe "xla" path there.
  """
  previous = getattr(_local, "in_jvp", False)
  _local.in_jvp = True
  try:
    yield
  finally:
    _local.in_jvp = previous


@contextlib.contextmanager
def recording():
  """Yields a list that receives the kernel name chosen by every attention call traced inside."""
  previous = getattr(_local, "log", None)
  _local.log = []
  try:
    yield _local.log
  finally:
    _local.log = previous


def choose(impl: str) -> str:
  """The kernel name model.attention_impl=`impl` runs for a call traced now."""
  if impl not in IMPLS:
    raise ValueError(f"model.attention_impl={impl!r}: allowed values are {sorted(IMPLS)}.")
  kernel = IMPLS[impl][1 if getattr(_local, "in_jvp", False) else 0]
  log = getattr(_local, "log", None)
  if log is not None:
    log.append(kernel)
  return kernel


def attend(impl: str, q, k, v, dot_general=None):
  """Attention by model.attention_impl=`impl`, [B, N, heads, d] -> same.

  `dot_general` (the model's bf16-operand matmul, or None) applies to the einsum kernel only: the
  fused kernels choose their own precision.
  """
  kernel = choose(impl)
  if kernel == "einsum" and dot_general is not None:
    return einsum_attention(q, k, v, dot_general=dot_general)
  return KERNELS[kernel](q, k, v)


# --- Matmul precision: float32 storage, matmul operands at another precision. ---

def _bf16_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None,
                      **kw):
  """dot_general on bf16 copies of float32 operands, accumulated and returned in float32.

  Explicit casts rather than a precision hint, so CPU runs round exactly as a GPU's bf16 GEMMs do.
  """
  del precision
  out_dtype = preferred_element_type or jnp.result_type(lhs, rhs)
  cast = lambda a: a.astype(jnp.bfloat16) if a.dtype == jnp.float32 else a
  return jax.lax.dot_general(cast(lhs), cast(rhs), dimension_numbers,
                             preferred_element_type=accumulation_dtype(out_dtype), **kw
                             ).astype(out_dtype)


def _bf16_conv(lhs, rhs, *args, precision=None, preferred_element_type=None, **kw):
  del precision
  out_dtype = preferred_element_type or jnp.result_type(lhs, rhs)
  cast = lambda a: a.astype(jnp.bfloat16) if a.dtype == jnp.float32 else a
  return jax.lax.conv_general_dilated(cast(lhs), cast(rhs), *args,
                                      preferred_element_type=accumulation_dtype(out_dtype),
                                      **kw).astype(out_dtype)


def _highest(op):
  """`op` at full float32 precision, whatever precision the layer passes (Flax passes None)."""
  def full(*args, precision=None, **kw):
    del precision
    return op(*args, precision=jax.lax.Precision.HIGHEST, **kw)
  return full


# model.matmul_precision -> (dot_general, conv_general_dilated) for the model's Dense/Conv layers;
# None means Flax's default (the platform's default precision: one bf16 pass on TPU, TF32 on
# NVIDIA Ampere and later).
MATMUL_PRECISIONS = {
    "default": (None, None),
    "bfloat16": (_bf16_dot_general, _bf16_conv),
    "float32": (_highest(jax.lax.dot_general), _highest(jax.lax.conv_general_dilated)),
}
