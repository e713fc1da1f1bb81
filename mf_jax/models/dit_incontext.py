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


def parse_variant(variant: str) -> Tuple[int, int, int, int]:
  """'B/2' -> (depth, width, heads, patch)."""
  m = re.fullmatch(r"([A-Za-z]+)/(\d+)", variant or "")
  if not m or m.group(1) not in VARIANTS or int(m.group(2)) < 1:
    raise ValueError(f"model.variant={variant!r}: expected NAME/PATCH with NAME in "
                     f"{list(VARIANTS)}, e.g. 'B/2'.")
  return VARIANTS[m.group(1)] + (int(m.group(2)),)


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


def rotary_interleaved(x: jax.Array) -> jax.Array:
  """Rotates channel pairs (2k, 2k + 1) of x [B, N, heads, d] by the angles of token n."""
  cos, sin = rope_table(x.shape[1], x.shape[-1])
  cos, sin = (jnp.asarray(a, x.dtype)[None, :, None] for a in (cos, sin))
  even, odd = x[..., 0::2], x[..., 1::2]
  rotated = jnp.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1)
  return rotated.reshape(x.shape)


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

  @nn.compact
  def __call__(self, x):
    b, n, _ = x.shape
    d = self.width // self.num_heads
    proj = lambda name: nn.Dense(self.width, use_bias=False, kernel_init=scaled_normal(BLOCK_INIT),
                                 name=name)
    q, k, v = (proj(name)(x).reshape(b, n, self.num_heads, d) for name in ("q", "k", "v"))
    q = rotary_interleaved(RMSNorm(name="q_norm")(q))
    k = rotary_interleaved(RMSNorm(name="k_norm")(k))
    acc = jnp.promote_types(x.dtype, jnp.float32)
    out = nn.dot_product_attention(q, k, v, dtype=acc)
    return proj("out")(out.reshape(b, n, self.width))


class Block(nn.Module):
  """Pre-RMSNorm block with zero-initialised per-channel residual gates."""
  width: int
  num_heads: int

  @nn.compact
  def __call__(self, x):
    w = self.width
    gate = lambda name: self.param(name, nn.initializers.zeros, (w,))
    x = x + Attention(w, self.num_heads, name="attn")(RMSNorm(name="norm1")(x)) * gate("attn_scale")
    dense = lambda n, name: nn.Dense(n, use_bias=False, kernel_init=scaled_normal(BLOCK_INIT),
                                     name=name)
    hidden = int(w * 8 / 3)  # Official: int(w * mlp_ratio), mlp_ratio = 8 / 3; 2730 for w = 1024.
    h = RMSNorm(name="norm2")(x)
    h = dense(w, "mlp_down")(nn.silu(dense(hidden, "mlp_gate")(h)) * dense(hidden, "mlp_up")(h))
    return x + h * gate("mlp_scale")


class InContextDiT(nn.Module):
  """The iMF network (see the module docstring).

  Attributes:
    variant: NAME/PATCH, NAME in VARIANTS ('B/2' ... 'XL/2' are the released sizes).
    v_head: build the auxiliary v head (training); False gives the inference model (u only).
    head_depth: blocks per head after the shared trunk.
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

  def dims(self):
    depth, width, heads, patch = parse_variant(self.variant)
    depth, width, heads = self.depth or depth, self.hidden_size or width, self.num_heads or heads
    if width % heads or (width // heads) % 2:
      raise ValueError(f"model.hidden_size={width} must be divisible by model.num_heads={heads} "
                       "with an even head width (rotary embedding).")
    if not 0 <= self.head_depth <= depth:
      raise ValueError(f"model.head_depth={self.head_depth} must lie in [0, depth={depth}].")
    if self.image_size % patch:
      raise ValueError(f"model.variant={self.variant!r}: patch {patch} does not divide "
                       f"data.image_size={self.image_size}.")
    return depth, width, heads, patch

  def prefix(self, h, omega, t_min, t_max, labels, width):
    """The 20 condition tokens [B, 20, width]."""
    token_init = nn.initializers.normal(1.0 / math.sqrt(width))
    embeddings = {
        "class": nn.Embed(self.num_classes + 1, width, embedding_init=token_init,
                          name="label_embedder")(labels),
        "omega": ScalarEmbedder(width, name="omega_embedder")(1.0 - 1.0 / omega),
        "t_min": ScalarEmbedder(width, name="t_min_embedder")(t_min),
        "t_max": ScalarEmbedder(width, name="t_max_embedder")(t_max),
        "time": ScalarEmbedder(width, name="h_embedder")(h),
    }
    groups = []
    for name, n in PREFIX_GROUPS:
      offsets = self.param(f"{name}_tokens", token_init, (n, width))
      groups.append(offsets[None] + embeddings[name][:, None])
    return jnp.concatenate(groups, axis=1)

  def head(self, tokens, name, width, heads, p):
    """One head's blocks, then RMSNorm and the zero-initialised output layer on the patch tokens."""
    for i in range(self.head_depth):
      tokens = Block(width, heads, name=f"{name}_block_{i}")(tokens)
    tokens = RMSNorm(name=f"{name}_final_norm")(tokens[:, sum(n for _, n in PREFIX_GROUPS):])
    return nn.Dense(p * p * self.channels, kernel_init=nn.initializers.zeros,
                    name=f"{name}_final")(tokens)

  @nn.compact
  def __call__(self, x, h, omega, t_min, t_max, labels):
    depth, width, heads, p = self.dims()
    b, hh, ww, c = x.shape
    gh, gw = hh // p, ww // p
    patches = nn.Conv(width, (p, p), strides=(p, p),
                      kernel_init=nn.initializers.xavier_uniform(in_axis=(0, 1, 2), out_axis=-1),
                      name="patch_embed")(x).reshape(b, gh * gw, width)
    tokens = jnp.concatenate(
        [self.prefix(h, omega, t_min, t_max, labels, width), patches], axis=1)
    shared = depth - self.head_depth
    for i in range(shared):
      tokens = Block(width, heads, name=f"shared_block_{i}")(tokens)

    def unpatchify(out):
      out = out.reshape(b, gh, gw, p, p, c).transpose(0, 1, 3, 2, 4, 5)
      return out.reshape(b, hh, ww, c)

    u = unpatchify(self.head(tokens, "u", width, heads, p))
    v = unpatchify(self.head(tokens, "v", width, heads, p)) if self.v_head else None
    return u, v


def count_params(variant: str, v_head: bool = True, image_size: int = 32, channels: int = 4,
                 num_classes: int = 1000, **fields) -> int:
  """Parameter count from shapes alone (jax.eval_shape): nothing is allocated."""
  model = InContextDiT(variant=variant, v_head=v_head, image_size=image_size, channels=channels,
                       num_classes=num_classes, **fields)
  s = jax.ShapeDtypeStruct((1,), jnp.float32)
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, image_size, image_size, channels), jnp.float32),
                          s, s, s, s, jax.ShapeDtypeStruct((1,), jnp.int32))
  return sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(shapes))
