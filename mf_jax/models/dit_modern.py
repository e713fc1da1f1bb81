"""The Drifting Models generator: a DiT with SwiGLU, RMSNorm, QK-norm, RoPE and in-context class tokens.

Conditioning (one vector c per sample, width = hidden size):
  c = class_embedding(label) + sum_i noise_embedding_i(noise_label_i)
      + 0.02 * RMSNorm(timestep_embedder(alpha))   (one embedder + norm per scalar condition).
c drives adaLN-Zero in every block and in the final layer, and, projected and tiled, becomes
`cls_tokens` extra tokens (plus a learned per-token offset) placed before the image tokens.
The noise labels are a second, discrete source of randomness ("style" input of the release):
`noise_coords` labels, each uniform in [0, noise_classes). When the caller gives none they are a
hash of the input noise's bits, so the call convention stays (noise, conditions, labels) and the
same noise always gives the same sample.

Blocks: x += gate * Attn(modulate(RMSNorm(x))); x += gate * SwiGLU(modulate(RMSNorm(x))).
Attention: q and k are RMS-normalised per head, then rotated by a 1-D rotary embedding over the
token index (class tokens first); q k^T / sqrt(d), softmax and the value product run in float32
(attn_fp32=False: in `dtype`, rotary angles too, as the release's latent SOTA configs).
The adaLN modulations are computed in float32; other matmuls in `dtype` (bfloat16 for training).
Image tokens get a learned position embedding initialised to 2-D sin-cos.

Shapes: x [B, H, W, C] channels last, each condition [B], labels [B] int, optional noise_labels
[B, noise_coords] int -> output [B, H, W, C] in x's dtype.
"""
import re
from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mf_jax.models import attention
from mf_jax.models.dit import VARIANTS, TimestepEmbedder, sincos_pos_embed

CONDITION_SCALE = 0.02  # Weight of each normalised scalar-condition embedding in c.


def parse_variant(variant: str, image_size: int) -> Tuple[int, int, int, int]:
  """'L/16' -> (depth, hidden_size, num_heads, patch_size); the patch must divide image_size."""
  m = re.fullmatch(r"([A-Za-z]+)/(\d+)", variant or "")
  if not m or m.group(1) not in VARIANTS or int(m.group(2)) < 1:
    raise ValueError(f"model.variant={variant!r}: expected NAME/PATCH with NAME in "
                     f"{sorted(VARIANTS, key=lambda k: VARIANTS[k][1])}, e.g. 'B/2' (latents) or "
                     "'L/16' (pixels).")
  patch = int(m.group(2))
  if image_size % patch:
    raise ValueError(f"model.variant={variant!r}: patch {patch} does not divide "
                     f"data.image_size={image_size}.")
  return VARIANTS[m.group(1)] + (patch,)


def swiglu_hidden(width: int, mlp_ratio: float) -> int:
  """2/3 of the plain MLP's hidden width (same parameter budget), rounded up to a multiple of 32."""
  hidden = int(2 / 3 * int(width * mlp_ratio))
  return -(-hidden // 32) * 32


class RMSNorm(nn.Module):
  """x / sqrt(mean(x^2) + eps) * scale over the last axis; statistics in float32, output in x's dtype."""
  eps: float = 1e-6
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    inv = jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    return (x32 * inv * scale).astype(x.dtype)


def rotary(x: jax.Array, exact_angles: bool = True) -> jax.Array:
  """Rotary embedding over axis 1 (token index), [B, N, heads, d]: channel j pairs with j + d/2.

  exact_angles=False takes the angles t * f and their cos/sin in x's dtype, as the release does
  for attention in bf16 (there positions above 256 and large angles round).
  """
  n, d = x.shape[1], x.shape[-1]
  half = d // 2
  if exact_angles:
    freqs = 1.0 / 10000.0 ** (np.arange(half, dtype=np.float64) / half)
    angles = np.outer(np.arange(n, dtype=np.float64), freqs)
    cos = jnp.asarray(np.tile(np.cos(angles), 2), x.dtype)[None, :, None]
    sin = jnp.asarray(np.tile(np.sin(angles), 2), x.dtype)[None, :, None]
  else:
    freqs = jnp.asarray(1.0 / 10000.0 ** (np.arange(half, dtype=np.float32) / half), x.dtype)
    angles = jnp.outer(jnp.arange(n, dtype=x.dtype), freqs)
    cos = jnp.tile(jnp.cos(angles), 2)[None, :, None]
    sin = jnp.tile(jnp.sin(angles), 2)[None, :, None]
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return x * cos + rotated * sin


def modulate(x, shift, scale):
  return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
  hidden_size: int
  num_heads: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attn_fp32: bool = True  # False: rotation, logits, softmax and value product in `dtype`.
  attention_impl: str = "einsum"  # models/attention.py; cudnn needs attn_fp32=False in bf16.

  @nn.compact
  def __call__(self, x):
    b, n, _ = x.shape
    d = self.hidden_size // self.num_heads
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype,
              kernel_init=nn.initializers.xavier_uniform())
    qkv = nn.Dense(3 * self.hidden_size, name="qkv", **kw)(x).reshape(b, n, 3, self.num_heads, d)
    q = RMSNorm(name="q_norm", param_dtype=self.param_dtype)(qkv[:, :, 0])
    k = RMSNorm(name="k_norm", param_dtype=self.param_dtype)(qkv[:, :, 1])
    # fp32 (or wider under x64) attention: rotation, logits, softmax and the value product.
    acc = jnp.promote_types(x.dtype, jnp.float32) if self.attn_fp32 else self.dtype
    q, k = (rotary(a.astype(acc), exact_angles=self.attn_fp32) for a in (q, k))
    v = qkv[:, :, 2].astype(acc)
    if self.attention_impl == "einsum":  # The release's formulation, softmax in `acc`.
      logits = jnp.einsum("bqhd,bkhd->bhqk", q * d ** -0.5, k)
      out = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v)
    else:  # A generator is never differentiated forward: "cudnn" runs cuDNN on every call.
      out = attention.attend(self.attention_impl, q, k, v)
    return nn.Dense(self.hidden_size, name="proj", **kw)(out.reshape(b, n, self.hidden_size))


class Block(nn.Module):
  hidden_size: int
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attn_fp32: bool = True
  attention_impl: str = "einsum"

  @nn.compact
  def __call__(self, x, c):
    w = self.hidden_size
    # adaLN-Zero in float32: every block starts as the identity.
    mod = nn.Dense(6 * w, kernel_init=nn.initializers.zeros, dtype=jnp.promote_types(
        c.dtype, jnp.float32), param_dtype=self.param_dtype, name="adaLN")(
            nn.silu(c.astype(jnp.promote_types(c.dtype, jnp.float32)))).astype(self.dtype)
    shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = jnp.split(mod, 6, axis=-1)
    h = modulate(RMSNorm(name="norm1", param_dtype=self.param_dtype)(x), shift_a, scale_a)
    x = x + gate_a[:, None] * Attention(w, self.num_heads, dtype=self.dtype,
                                        param_dtype=self.param_dtype, attn_fp32=self.attn_fp32,
                                        attention_impl=self.attention_impl, name="attn")(
                                            h.astype(self.dtype))
    h = modulate(RMSNorm(name="norm2", param_dtype=self.param_dtype)(x), shift_m, scale_m)
    h = h.astype(self.dtype)
    dense = lambda n, name: nn.Dense(n, dtype=self.dtype, param_dtype=self.param_dtype, name=name,
                                     kernel_init=nn.initializers.xavier_uniform())
    hidden = swiglu_hidden(w, self.mlp_ratio)
    h = dense(w, "mlp_down")(nn.silu(dense(hidden, "mlp_gate")(h)) * dense(hidden, "mlp_up")(h))
    return x + gate_m[:, None] * h


def _mix32(h):
  """A bijective integer mixing function on uint32 (MurmurHash3's finaliser)."""
  h = (h ^ (h >> 16)) * np.uint32(0x85EBCA6B)
  h = (h ^ (h >> 13)) * np.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def noise_labels_from_noise(x: jax.Array, coords: int, classes: int) -> jax.Array:
  """[B, coords] labels uniform in [0, classes), a hash of each sample's noise bits."""
  bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32).reshape(x.shape[0], -1)
  position = _mix32(np.arange(1, bits.shape[1] + 1, dtype=np.uint32))
  seeds = jnp.sum(_mix32(bits ^ position[None]), axis=1, dtype=jnp.uint32)  # Wraps modulo 2^32.
  golden = np.arange(1, coords + 1, dtype=np.uint32) * np.uint32(0x9E3779B9)  # Wraps too.
  return (_mix32(seeds[:, None] + golden[None]) % np.uint32(classes)).astype(jnp.int32)


class ModernDiT(nn.Module):
  """The released Drifting generator (see the module docstring).

  Attributes:
    variant: NAME/PATCH; NAME picks (depth, width, heads) as in dit.VARIANTS, PATCH any divisor
      of image_size (2 for 32x32x4 latents, 16 for 256x256x3 pixels).
    num_classes: rows of the class embedding (the release has no null row; guidance is the alpha
      condition). 0 means unconditional: one row, labels ignored.
    cls_tokens: in-context class tokens before the image tokens.
    noise_classes, noise_coords: the noise labels; noise_classes = 0 turns them off.
    attn_fp32: attention in float32 (True) or in `dtype` (the release's attn_fp32).
  """
  variant: str = "B/2"
  image_size: int = 32
  channels: int = 4
  num_classes: int = 1000
  condition_names: Sequence[str] = ("alpha",)
  depth: Optional[int] = None
  hidden_size: Optional[int] = None
  num_heads: Optional[int] = None
  mlp_ratio: float = 4.0
  cls_tokens: int = 16
  noise_classes: int = 64
  noise_coords: int = 32
  remat: bool = False
  attn_fp32: bool = True
  attention_impl: str = "einsum"  # models/attention.py; cudnn: GPU, bf16 with attn_fp32=False.
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def dims(self):
    depth, width, heads, patch = parse_variant(self.variant, self.image_size)
    depth, width, heads = self.depth or depth, self.hidden_size or width, self.num_heads or heads
    if self.attention_impl not in attention.IMPLS:
      raise ValueError(f"model.attention_impl={self.attention_impl!r}: allowed values are "
                       f"{sorted(attention.IMPLS)}.")
    if self.attention_impl in attention.NEEDS_HALF_PRECISION and (
        self.attn_fp32 or jnp.dtype(self.dtype) not in (jnp.bfloat16, jnp.float16)):
      raise ValueError(f"model.attention_impl={self.attention_impl!r} needs bf16 attention: set "
                       "model.compute_dtype='bfloat16' and model.attn_fp32=False.")
    if width % heads or (width // heads) % 2 or width % 4:
      raise ValueError(f"model.hidden_size={width} must be divisible by 4 and by model.num_heads="
                       f"{heads} with an even head width (rotary embedding).")
    return depth, width, heads, patch

  def condition(self, conditions, labels, noise_labels):
    """The conditioning vector c [B, width] in float32 (see the module docstring)."""
    _, width, _, _ = self.dims()
    kw = dict(param_dtype=self.param_dtype, embedding_init=nn.initializers.normal(0.02))
    b = conditions[0].shape[0]
    labels = jnp.zeros((b,), jnp.int32) if self.num_classes == 0 else labels
    c = nn.Embed(max(self.num_classes, 1), width, name="label_embedder", **kw)(labels)
    if self.noise_classes > 0:
      table = self.param("noise_embed", nn.initializers.normal(0.02),
                         (self.noise_coords, self.noise_classes, width), self.param_dtype)
      c = c + jnp.sum(table[jnp.arange(self.noise_coords)[None], noise_labels], axis=1)
    for name, s in zip(self.condition_names, conditions):
      e = TimestepEmbedder(width, dtype=self.dtype, param_dtype=self.param_dtype,
                           name=f"{name}_embedder")(jnp.broadcast_to(s, (b,)))
      c = c + CONDITION_SCALE * RMSNorm(name=f"{name}_norm", param_dtype=self.param_dtype)(e)
    return c.astype(self.dtype)

  @nn.compact
  def __call__(self, x, conditions: Sequence[jax.Array], labels: Optional[jax.Array] = None,
               noise_labels: Optional[jax.Array] = None):
    depth, width, heads, p = self.dims()
    if len(conditions) != len(self.condition_names):
      raise ValueError(f"ModernDiT expects conditions {tuple(self.condition_names)}, got "
                       f"{len(conditions)}.")
    b, h, w, ch = x.shape
    if self.noise_classes > 0 and noise_labels is None:
      noise_labels = noise_labels_from_noise(x, self.noise_coords, self.noise_classes)
    c = self.condition(conditions, labels, noise_labels)
    dense = lambda n, name, **kw: nn.Dense(n, dtype=self.dtype, param_dtype=self.param_dtype,
                                           name=name, **kw)

    gh, gw = h // p, w // p
    if gh != gw or h % p:
      raise ValueError(f"ModernDiT needs square inputs divisible by the patch {p}, got {h}x{w}.")
    patches = x.astype(self.dtype).reshape(b, gh, p, gw, p, ch).transpose(0, 1, 3, 2, 4, 5)
    tokens = dense(width, "patch_embed", kernel_init=nn.initializers.xavier_uniform())(
        patches.reshape(b, gh * gw, p * p * ch))
    pos = self.param("pos_embed", lambda *_: jnp.asarray(sincos_pos_embed(gh, width)),
                     (gh * gw, width), self.param_dtype)
    tokens = (tokens + pos[None]).astype(self.dtype)
    if self.cls_tokens > 0:
      offsets = self.param("cls_embed", nn.initializers.normal(0.02), (self.cls_tokens, width),
                           self.param_dtype)
      cls = dense(width, "cls_proj", kernel_init=nn.initializers.xavier_uniform())(c)
      tokens = jnp.concatenate([(cls[:, None] + offsets[None]).astype(self.dtype), tokens], axis=1)

    block = nn.remat(Block) if self.remat else Block
    for i in range(depth):
      tokens = block(width, heads, self.mlp_ratio, dtype=self.dtype, param_dtype=self.param_dtype,
                     attn_fp32=self.attn_fp32, attention_impl=self.attention_impl,
                     name=f"block_{i}")(tokens, c)

    acc = jnp.promote_types(c.dtype, jnp.float32)
    shift, scale = jnp.split(nn.Dense(2 * width, kernel_init=nn.initializers.zeros, dtype=acc,
                                      param_dtype=self.param_dtype, name="final_adaLN")(
                                          nn.silu(c.astype(acc))).astype(self.dtype), 2, axis=-1)
    tokens = modulate(RMSNorm(name="final_norm", param_dtype=self.param_dtype)(tokens), shift, scale)
    out = dense(p * p * ch, "final_proj", kernel_init=nn.initializers.zeros)(
        tokens[:, self.cls_tokens:].astype(self.dtype))
    out = out.reshape(b, gh, gw, p, p, ch).transpose(0, 1, 3, 2, 4, 5).reshape(b, h, w, ch)
    return out.astype(x.dtype)


def count_params(variant: str, image_size: int = 32, channels: int = 4, num_classes: int = 1000,
                 **fields) -> int:
  """Parameter count from shapes alone (jax.eval_shape): nothing is allocated.

  `fields` are further ModernDiT fields (cls_tokens, noise_classes, noise_coords, depth, ...).
  """
  model = ModernDiT(variant=variant, image_size=image_size, channels=channels,
                    num_classes=num_classes, **fields)
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, image_size, image_size, channels), jnp.float32),
                          tuple(jax.ShapeDtypeStruct((1,), jnp.float32)
                                for _ in model.condition_names),
                          jax.ShapeDtypeStruct((1,), jnp.int32))
  return sum(int(np.prod(s.shape)) for s in jax.tree_util.tree_leaves(shapes))
