"""DiT with adaLN-Zero (Peebles & Xie), conditioned on several scalar times and a class label.

MeanFlow feeds two scalars, t and t - r, each through its own timestep embedder; their embeddings are
summed with the class embedding. Times enter in [0, 1] (no x1000 scaling: large frequencies make the
jvp's du/dt explode). Label `num_classes` is the null class used for classifier-free guidance.

Shapes: x [B, H, W, C] (channels last), each scalar [B], labels [B] int -> output [B, H, W, C].
"""
import math
import re
from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mf_jax.models import attention

# name -> (depth, hidden size, heads). Patch size comes from the "/p" suffix.
VARIANTS = {
    "Ti": (12, 192, 3),
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "M": (16, 1024, 16),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}
PATCH_SIZES = (1, 2, 4, 8, 16)  # 16: pixel-space generators on 256 x 256 x 3.


def parse_variant(variant: str) -> Tuple[int, int, int, int]:
  """'B/2' -> (depth, hidden_size, num_heads, patch_size); clear error for anything else."""
  m = re.fullmatch(r"([A-Za-z]+)/(\d+)", variant or "")
  if not m or m.group(1) not in VARIANTS or int(m.group(2)) not in PATCH_SIZES:
    raise ValueError(f"model.variant={variant!r}: expected NAME/PATCH with NAME in "
                     f"{sorted(VARIANTS, key=lambda k: VARIANTS[k][1])} and PATCH in {PATCH_SIZES}, "
                     "for example 'B/2'.")
  depth, width, heads = VARIANTS[m.group(1)]
  return depth, width, heads, int(m.group(2))


def sincos_pos_embed(grid: int, dim: int) -> np.ndarray:
  """Fixed 2-D sin-cos position embedding, [grid * grid, dim], tokens in row-major order.

  The first half of the channels encodes the column, the second half the row, each as
  [sin, cos] of the position times frequencies 10000^(-k / (dim / 4)): the published DiT / MeanFlow
  order, so released weights load unchanged.
  """
  def one_axis(pos, d):
    omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
    out = np.outer(pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)
  rows, cols = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64),
                           indexing="ij")
  return np.concatenate([one_axis(cols, dim // 2), one_axis(rows, dim // 2)],
                        axis=1).astype(np.float32)


def timestep_features(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """Sinusoidal features of t in [0, 1]: frequencies from 1 down to 1/max_period. [B] -> [B, dim]."""
  half = dim // 2
  dtype = jnp.promote_types(t.dtype, jnp.float32)  # Keeps float64 when x64 tests ask for it.
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=dtype) / half)
  args = t.astype(dtype)[:, None] * freqs[None]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def modulate(x, shift, scale):
  return x * (1 + scale[:, None]) + shift[:, None]


class TimestepEmbedder(nn.Module):
  hidden_size: int
  freq_dim: int = 256
  matmul_precision: str = "default"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, t):
    dense = lambda n, name: nn.Dense(n, dtype=self.dtype, param_dtype=self.param_dtype, name=name,
                                     kernel_init=nn.initializers.normal(0.02),
                                     **layer_ops(self.matmul_precision)[0])
    h = timestep_features(t, self.freq_dim).astype(self.param_dtype)
    return dense(self.hidden_size, "mlp_out")(nn.silu(dense(self.hidden_size, "mlp_in")(h)))


# model.attention_impl values; see models/attention.py for what each runs inside and outside a jvp.
ATTENTION_IMPLS = tuple(sorted(attention.IMPLS))
einsum_attention = attention.einsum_attention


def layer_ops(matmul_precision: str):
  """Keyword arguments giving Dense (dot_general) and Conv (conv_general_dilated) layers the
  precision of model.matmul_precision."""
  dot, conv = attention.MATMUL_PRECISIONS[matmul_precision]
  return dict(dot_general=dot), dict(conv_general_dilated=conv)


class Attention(nn.Module):
  """Multi-head self-attention."""
  hidden_size: int
  num_heads: int
  impl: str = "einsum"
  matmul_precision: str = "default"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, n, _ = x.shape
    head_dim = self.hidden_size // self.num_heads
    dot = layer_ops(self.matmul_precision)[0]
    dense = lambda n_out, name: nn.Dense(n_out, dtype=self.dtype, param_dtype=self.param_dtype,
                                         kernel_init=nn.initializers.xavier_uniform(), name=name,
                                         **dot)
    qkv = dense(3 * self.hidden_size, "qkv")(x)
    q, k, v = jnp.split(qkv.reshape(b, n, 3 * self.num_heads, head_dim), 3, axis=2)
    out = attention.attend(self.impl, q, k, v, dot["dot_general"])  # [B, N, heads, head_dim]
    return dense(self.hidden_size, "proj")(out.reshape(b, n, self.hidden_size))


class DiTBlock(nn.Module):
  hidden_size: int
  num_heads: int
  mlp_ratio: float = 4.0
  attention_impl: str = "einsum"
  matmul_precision: str = "default"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, c):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    dot = layer_ops(self.matmul_precision)[0]
    # adaLN-Zero: the modulation starts at zero, so every block starts as the identity.
    mod = nn.Dense(6 * self.hidden_size, kernel_init=nn.initializers.zeros, name="adaLN", **kw,
                   **dot)(nn.silu(c))
    shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = jnp.split(mod, 6, axis=-1)
    norm = lambda name: nn.LayerNorm(1e-6, use_bias=False, use_scale=False, name=name, **kw)
    h = modulate(norm("norm1")(x), shift_a, scale_a)
    x = x + gate_a[:, None] * Attention(self.hidden_size, self.num_heads, self.attention_impl,
                                        self.matmul_precision, name="attn", **kw)(h)
    h = modulate(norm("norm2")(x), shift_m, scale_m)
    dense = lambda n, name: nn.Dense(n, kernel_init=nn.initializers.xavier_uniform(), name=name,
                                     **kw, **dot)
    h = dense(self.hidden_size, "mlp_out")(
        nn.gelu(dense(int(self.hidden_size * self.mlp_ratio), "mlp_in")(h), approximate=True))
    return x + gate_m[:, None] * h


class DiT(nn.Module):
  """Diffusion transformer returning a field with the input's shape.

  Attributes:
    condition_names: one timestep embedder per scalar condition, in call order. MeanFlow uses
      ("t", "t_minus_r"); a drifting generator can use ("alpha",).
    num_classes: real classes; the embedding table has one more row for the null label. 0 means
      unconditional (labels are ignored).
  """
  variant: str = "B/2"
  image_size: int = 32
  channels: int = 4
  num_classes: int = 1000
  condition_names: Sequence[str] = ("t", "t_minus_r")
  depth: Optional[int] = None  # Overrides of the variant's depth / width / heads, for tiny models.
  hidden_size: Optional[int] = None
  num_heads: Optional[int] = None
  attention_impl: str = "einsum"  # One of ATTENTION_IMPLS (models/attention.py).
  # Matmul operands: "default" (the platform's), "bfloat16" (bf16 operands, float32 accumulation and
  # activations: float32 storage at bf16 matmul speed on GPUs) or "float32" (full precision).
  matmul_precision: str = "default"
  remat: bool = False  # Recompute each block's activations in the backward pass (saves memory).
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def dims(self):
    depth, width, heads, patch = parse_variant(self.variant)
    depth, width, heads = self.depth or depth, self.hidden_size or width, self.num_heads or heads
    if self.image_size % patch:
      raise ValueError(f"model.variant={self.variant!r}: patch {patch} does not divide "
                       f"image_size={self.image_size}.")
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"model.attention_impl={self.attention_impl!r}: allowed values are "
                       f"{list(ATTENTION_IMPLS)}.")
    if (self.attention_impl in attention.NEEDS_HALF_PRECISION
        and jnp.dtype(self.dtype) not in (jnp.bfloat16, jnp.float16)):
      raise ValueError(f"model.attention_impl={self.attention_impl!r} needs bf16 activations: set "
                       "model.compute_dtype='bfloat16' or use attention_impl='xla'.")
    if self.matmul_precision not in attention.MATMUL_PRECISIONS:
      raise ValueError(f"model.matmul_precision={self.matmul_precision!r}: allowed values are "
                       f"{sorted(attention.MATMUL_PRECISIONS)}.")
    if width % heads or width % 4:
      raise ValueError(f"model hidden_size={width} must be divisible by num_heads={heads} and 4.")
    return depth, width, heads, patch

  @nn.compact
  def __call__(self, x, conditions: Sequence[jax.Array], labels: Optional[jax.Array] = None):
    depth, width, heads, p = self.dims()
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if len(conditions) != len(self.condition_names):
      raise ValueError(f"DiT expects conditions {tuple(self.condition_names)}, got {len(conditions)}.")
    b, h, w, ch = x.shape
    grid = h // p
    # Patchify: a strided conv is a linear map of each p x p x C patch.
    # Xavier-uniform over the whole p x p x C patch (fan-in p*p*C), as in DiT / MeanFlow.
    dot, conv = layer_ops(self.matmul_precision)
    tokens = nn.Conv(width, (p, p), strides=(p, p), padding="VALID", name="patch_embed",
                     kernel_init=nn.initializers.xavier_uniform(in_axis=(0, 1, 2), out_axis=-1),
                     **kw, **conv)(x)
    tokens = tokens.reshape(b, grid * grid, width) + sincos_pos_embed(grid, width)[None]

    c = sum(TimestepEmbedder(width, matmul_precision=self.matmul_precision,
                             name=f"{name}_embedder", **kw)(s)
            for name, s in zip(self.condition_names, conditions))
    if self.num_classes > 0:
      c = c + nn.Embed(self.num_classes + 1, width, embedding_init=nn.initializers.normal(0.02),
                       name="label_embedder", **kw)(labels)

    block = nn.remat(DiTBlock) if self.remat else DiTBlock
    for i in range(depth):
      tokens = block(width, heads, attention_impl=self.attention_impl,
                     matmul_precision=self.matmul_precision, name=f"block_{i}", **kw)(tokens, c)

    shift, scale = jnp.split(nn.Dense(2 * width, kernel_init=nn.initializers.zeros,
                                      name="final_adaLN", **kw, **dot)(nn.silu(c)), 2, axis=-1)
    tokens = modulate(nn.LayerNorm(1e-6, use_bias=False, use_scale=False, name="final_norm", **kw)(
        tokens), shift, scale)
    out = nn.Dense(p * p * ch, kernel_init=nn.initializers.zeros, name="final_proj", **kw, **dot)(
        tokens)
    # Unpatchify [B, grid*grid, p*p*C] -> [B, H, W, C].
    out = out.reshape(b, grid, grid, p, p, ch).transpose(0, 1, 3, 2, 4, 5).reshape(b, h, w, ch)
    return out.astype(x.dtype)


def count_params(variant: str, image_size: int = 32, channels: int = 4, num_classes: int = 1000,
                 condition_names: Sequence[str] = ("t", "t_minus_r"), **overrides) -> int:
  """Parameter count from shapes alone (jax.eval_shape): nothing is allocated.

  `overrides` are further DiT fields (depth, hidden_size, num_heads).
  """
  model = DiT(variant=variant, image_size=image_size, channels=channels, num_classes=num_classes,
              condition_names=tuple(condition_names), **overrides)
  b = 1
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((b, image_size, image_size, channels), jnp.float32),
                          tuple(jax.ShapeDtypeStruct((b,), jnp.float32) for _ in condition_names),
                          jax.ShapeDtypeStruct((b,), jnp.int32))
  return sum(int(np.prod(s.shape)) for s in jax.tree_util.tree_leaves(shapes))
