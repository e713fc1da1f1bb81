"""The improved MeanFlow network: a DiT without adaLN, conditioned by in-context tokens, with a u head
and an auxiliary v head on a shared trunk (Geng et al., "Improved Mean Flows", arXiv 2512.02012).

Checked against the official code (Lyy-iiis/imeanflow at bf60cd7cb653f6628e59d48034b333c5eba445e2,
models/imfDiT.py, embedder.py, torch_models.py); the layout and initialisation are the official ones.

Inputs: x [B, H, W, C] channels last; per-sample scalars h = t - r, omega (guidance scale), t_min,
t_max [B]; labels [B] int, `num_classes` being the null label. The network never sees t itself.
Output (u, v), each [B, H, W, C]; v is None in the inference model (v_head=False).

Token sequence: 20 prefix tokens, then the patch tokens (no absolute position embedding):
  [class 8 | omega 4 | t_min 2 | t_max 2 | time 4 | patches].
Each prefix group is a learned per-token offset plus one embedding broadcast over the group: the
label's, and sinusoid-MLP embeddings of 1 - 1/omega, t_min, t_max and h.
Blocks: x += a * Attn(RMSNorm(x)); x += m * SwiGLU(RMSNorm(x)), with per-channel gates a, m
initialised to zero (every block starts as the identity). Attention has bias-free q, k, v, out
projections, RMS-normalised q and k per head, and a 1-D rotary embedding over the token index of all
tokens that rotates the interleaved channel pairs (2k, 2k + 1). The SwiGLU is bias-free with hidden
width int(8/3 w). The last `head_depth` blocks are per head; each head ends in RMSNorm and a
zero-initialised linear layer on the patch tokens.
"""
import math
import re
from typing import Any, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mf_jax.models.dit import timestep_features
from mf_jax.models.dit_modern import RMSNorm

# name -> (depth of the u path (trunk + u head), width, heads); the patch comes from "/p".
VARIANTS = {
    "B": (12, 768, 12),
    "M": (24, 768, 12),
    "L": (32, 1024, 16),
    "XL": (48, 1024, 16),
}
# (name, tokens) of the prefix groups, in sequence order.
PREFIX_GROUPS = (("class", 8), ("omega", 4), ("t_min", 2), ("t_max", 2), ("time", 4))
BLOCK_INIT = 0.32  # Block weights ~ N(0, (0.32 / sqrt(fan_in))^2).


def parse_variant(variant: str, variants=None, example: str = "B/2"
                  ) -> Tuple[int, int, int, int]:
  """'B/2' -> (depth, width, heads, patch), from `variants` (default: iMF's VARIANTS)."""
  variants = VARIANTS if variants is None else variants
  m = re.fullmatch(r"([A-Za-z]+)/(\d+)", variant or "")
  if not m or m.group(1) not in variants or int(m.group(2)) < 1:
    raise ValueError(f"model.variant={variant!r}: expected NAME/PATCH with NAME in "
                     f"{list(variants)}, e.g. {example!r}.")
  return variants[m.group(1)] + (int(m.group(2)),)


def scaled_normal(constant: float):
  """N(0, (constant / sqrt(fan_in))^2) for a Dense kernel [fan_in, fan_out]."""
  return lambda key, shape, dtype=jnp.float32: (
      constant / math.sqrt(shape[0]) * jax.random.normal(key, shape, dtype))


def rope_table(num_tokens: int, head_dim: int) -> Tuple[np.ndarray, np.ndarray]:
  """(cos, sin), each [num_tokens, head_dim / 2]: angles n * 10000^(-2k / head_dim).

  Computed in float32 as the official code does, so the rotation matches the released weights'
  to the bit rather than to float32 rounding of angles up to ~300 radians.
  """
  freqs = (1.0 / 10000.0 ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim))
           ).astype(np.float32)
  angles = np.outer(np.arange(num_tokens, dtype=np.float32), freqs).astype(np.float32)
  return np.cos(angles), np.sin(angles)


def rope_table_2d(grid: int, head_dim: int) -> Tuple[np.ndarray, np.ndarray]:
  """(cos, sin), each [grid * grid, head_dim / 2], for a row-major grid of tokens (row i, column j).

  Pairs k < head_dim / 4 turn by i * f_k, pairs head_dim / 4 + k by j * f_k, with
  f_k = 10000^(-4k / head_dim) (the 1-D table's frequencies over half the width). Float32 as the
  official pMF code computes it.
  """
  cos, sin = rope_table(grid, head_dim // 2)  # [grid, head_dim / 4]: angles by one index.
  rows = lambda a: np.repeat(a, grid, axis=0)  # Token i * grid + j -> row i.
  cols = lambda a: np.tile(a, (grid, 1))  # -> column j.
  return (np.concatenate([rows(cos), cols(cos)], axis=1),
          np.concatenate([rows(sin), cols(sin)], axis=1))


def rotary_interleaved(x: jax.Array, grid: int = 0) -> jax.Array:
  """Rotates channel pairs (2k, 2k + 1) of x [B, N, heads, d].

  grid=0: every token n by the 1-D angles of n (iMF). grid=g: only the last g * g tokens (the
  patches, row-major) by the 2-D angles of their (row, column); the tokens before them are kept.
  """
  n, d = x.shape[1], x.shape[-1]
  cos, sin = rope_table_2d(grid, d) if grid else rope_table(n, d)
  kept, x = x[:, :n - cos.shape[0]], x[:, n - cos.shape[0]:]
  cos, sin = (jnp.asarray(a, x.dtype)[None, :, None] for a in (cos, sin))
  even, odd = x[..., 0::2], x[..., 1::2]
  rotated = jnp.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1).reshape(x.shape)
  return jnp.concatenate([kept, rotated], axis=1) if kept.shape[1] else rotated


def mlp_hidden(width: int, multiple: int = 1) -> int:
  """SwiGLU hidden width: int(8/3 w) (2730 for w = 1024), rounded up to `multiple` (the official
  pMF H models round to 8: 3416 for w = 1280)."""
  hidden = int(width * 8 / 3)
  return -(-hidden // multiple) * multiple


class ScalarEmbedder(nn.Module):
  """Scalar [B] -> [B, width]: 256 sinusoid features [cos, sin], Dense, SiLU, Dense (with biases)."""
  width: int
  freq_dim: int = 256

  @nn.compact
  def __call__(self, s):
    f = timestep_features(s, self.freq_dim)
    h = nn.Dense(self.width, kernel_init=scaled_normal(1.0), name="mlp_in")(f)
    return nn.Dense(self.width, kernel_init=scaled_normal(1.0), name="mlp_out")(nn.silu(h))


class Attention(nn.Module):
  width: int
  num_heads: int
  rope_grid: int = 0  # 0: 1-D rotary over all tokens; g: 2-D over the last g * g tokens.

  @nn.compact
  def __call__(self, x):
    b, n, _ = x.shape
    d = self.width // self.num_heads
    proj = lambda name: nn.Dense(self.width, use_bias=False, kernel_init=scaled_normal(BLOCK_INIT),
                                 name=name)
    q, k, v = (proj(name)(x).reshape(b, n, self.num_heads, d) for name in ("q", "k", "v"))
    q = rotary_interleaved(RMSNorm(name="q_norm")(q), self.rope_grid)
    k = rotary_interleaved(RMSNorm(name="k_norm")(k), self.rope_grid)
    acc = jnp.promote_types(x.dtype, jnp.float32)
    out = nn.dot_product_attention(q, k, v, dtype=acc)
    return proj("out")(out.reshape(b, n, self.width))


class Block(nn.Module):
  """Pre-RMSNorm block with zero-initialised per-channel residual gates."""
  width: int
  num_heads: int
  rope_grid: int = 0  # See Attention.
  mlp_multiple: int = 1  # See mlp_hidden.

  @nn.compact
  def __call__(self, x):
    w = self.width
    gate = lambda name: self.param(name, nn.initializers.zeros, (w,))
    attn = Attention(w, self.num_heads, self.rope_grid, name="attn")
    x = x + attn(RMSNorm(name="norm1")(x)) * gate("attn_scale")
    dense = lambda n, name: nn.Dense(n, use_bias=False, kernel_init=scaled_normal(BLOCK_INIT),
                                     name=name)
    hidden = mlp_hidden(w, self.mlp_multiple)
    h = RMSNorm(name="norm2")(x)
    h = dense(w, "mlp_down")(nn.silu(dense(hidden, "mlp_gate")(h)) * dense(hidden, "mlp_up")(h))
    return x + h * gate("mlp_scale")


class InContextDiT(nn.Module):
  """The iMF network (see the module docstring).

  Attributes:
    variant: NAME/PATCH, NAME in VARIANTS ('B/2' ... 'XL/2' are the released sizes).
    v_head: build the auxiliary v head (training); False gives the inference model (u only).
    head_depth: blocks per head after the shared trunk.

  Subclasses (mf_jax/models/dit_pixel.py) change the variants, the patch embedding, the prefix
  parameters' shapes, the positions and the block options through the methods below.
  """
  variant: str = "B/2"
  image_size: int = 32
  channels: int = 4
  num_classes: int = 1000
  v_head: bool = True
  head_depth: int = 8
  depth: Any = None  # Overrides of the variant's sizes (tiny test models).
  hidden_size: Any = None
  num_heads: Any = None

  def variants(self):
    """name -> (depth of the u path, width, heads), and an example variant string."""
    return VARIANTS, "B/2"

  def dims(self):
    depth, width, heads, patch = parse_variant(self.variant, *self.variants())
    depth, width, heads = self.depth or depth, self.hidden_size or width, self.num_heads or heads
    if width % heads or (width // heads) % self.head_width_multiple():
      raise ValueError(f"model.hidden_size={width} must be divisible by model.num_heads={heads} "
                       f"with a head width divisible by {self.head_width_multiple()} (rotary "
                       "embedding).")
    if not 0 <= self.head_depth <= depth:
      raise ValueError(f"model.head_depth={self.head_depth} must lie in [0, depth={depth}].")
    if self.image_size % patch:
      raise ValueError(f"model.variant={self.variant!r}: patch {patch} does not divide "
                       f"data.image_size={self.image_size}.")
    return depth, width, heads, patch

  def head_width_multiple(self) -> int:
    return 2  # Channel pairs of the 1-D rotary embedding.

  def block_options(self, width: int, patch: int):
    """Extra Block fields (none for iMF: 1-D rotary over all tokens, SwiGLU width int(8/3 w))."""
    del width, patch
    return {}

  def embed_patches(self, x, width, p):
    """x [B, H, W, C] -> patch tokens [B, H/p * W/p, width], row-major: one p x p conv."""
    conv = nn.Conv(width, (p, p), strides=(p, p),
                   kernel_init=nn.initializers.xavier_uniform(in_axis=(0, 1, 2), out_axis=-1),
                   name="patch_embed")
    return conv(x).reshape(x.shape[0], -1, width)

  def token_shape(self, n: int, width: int):
    """Shape of a prefix group's learned offsets ([n, width] here)."""
    return (n, width)

  def label_embedding(self, labels, width):
    """labels [B] -> [B, width] from a table of num_classes + 1 rows (the last: null label)."""
    return nn.Embed(self.num_classes + 1, width,
                    embedding_init=nn.initializers.normal(1.0 / math.sqrt(width)),
                    name="label_embedder")(labels)

  def add_positions(self, tokens):
    """Absolute positions of the whole sequence [B, N, width]: none in iMF (rotary only)."""
    return tokens

  def prefix(self, h, omega, t_min, t_max, labels, width):
    """The 20 condition tokens [B, 20, width]."""
    token_init = nn.initializers.normal(1.0 / math.sqrt(width))
    embeddings = {
        "class": self.label_embedding(labels, width),
        "omega": ScalarEmbedder(width, name="omega_embedder")(1.0 - 1.0 / omega),
        "t_min": ScalarEmbedder(width, name="t_min_embedder")(t_min),
        "t_max": ScalarEmbedder(width, name="t_max_embedder")(t_max),
        "time": ScalarEmbedder(width, name="h_embedder")(h),
    }
    groups = []
    for name, n in PREFIX_GROUPS:
      offsets = self.param(f"{name}_tokens", token_init, self.token_shape(n, width))
      groups.append(offsets.reshape(1, n, width) + embeddings[name][:, None])
    return jnp.concatenate(groups, axis=1)

  def head(self, tokens, name, width, heads, p):
    """One head's blocks, then RMSNorm and the zero-initialised output layer on the patch tokens."""
    for i in range(self.head_depth):
      tokens = Block(width, heads, **self.block_options(width, p), name=f"{name}_block_{i}")(tokens)
    tokens = RMSNorm(name=f"{name}_final_norm")(tokens[:, sum(n for _, n in PREFIX_GROUPS):])
    return nn.Dense(p * p * self.channels, kernel_init=nn.initializers.zeros,
                    name=f"{name}_final")(tokens)

  @nn.compact
  def __call__(self, x, h, omega, t_min, t_max, labels):
    depth, width, heads, p = self.dims()
    b, hh, ww, c = x.shape
    gh, gw = hh // p, ww // p
    patches = self.embed_patches(x, width, p)
    tokens = jnp.concatenate([self.prefix(h, omega, t_min, t_max, labels, width), patches], axis=1)
    tokens = self.add_positions(tokens)
    shared = depth - self.head_depth
    for i in range(shared):
      tokens = Block(width, heads, **self.block_options(width, p),
                     name=f"shared_block_{i}")(tokens)

    def unpatchify(out):
      out = out.reshape(b, gh, gw, p, p, c).transpose(0, 1, 3, 2, 4, 5)
      return out.reshape(b, hh, ww, c)

    u = unpatchify(self.head(tokens, "u", width, heads, p))
    v = unpatchify(self.head(tokens, "v", width, heads, p)) if self.v_head else None
    return u, v


def param_count(model: nn.Module) -> int:
  """Parameter count of an in-context DiT (or subclass) from shapes alone (jax.eval_shape)."""
  s = jax.ShapeDtypeStruct((1,), jnp.float32)
  shapes = jax.eval_shape(
      model.init, jax.random.key(0),
      jax.ShapeDtypeStruct((1, model.image_size, model.image_size, model.channels), jnp.float32),
      s, s, s, s, jax.ShapeDtypeStruct((1,), jnp.int32))
  return sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(shapes))


def count_params(variant: str, v_head: bool = True, image_size: int = 32, channels: int = 4,
                 num_classes: int = 1000, **fields) -> int:
  """Parameter count from shapes alone (jax.eval_shape): nothing is allocated."""
  return param_count(InContextDiT(variant=variant, v_head=v_head, image_size=image_size,
                                  channels=channels, num_classes=num_classes, **fields))
