"""An MLP generator / field for small vector data (2-D toys, 8x8 digits).

One module serves both methods:
  * drifting generator: MLP(out_dim=2, condition_names=("alpha",)) called as
    apply(params, noise [B, 32], (alpha,), labels) -> samples [B, 2];
  * MeanFlow u-network: MLP(out_dim=2, condition_names=("t", "t_minus_r")) called as
    apply(params, z [B, 2], (t, t - r), labels) -> u [B, 2].
Each scalar condition enters through sinusoidal features of its value (frequencies 1 down to
1/10000, as in the DiT, so inputs in [0, 1] or [1, 4] need no rescaling); the class label through an
embedding table with one extra row, `num_classes`, for the null label. Inputs [B, ...] are flattened.
"""
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mf_jax.models.dit import timestep_features


class MLP(nn.Module):
  """SiLU MLP on concat(x, sinusoid(condition) for each condition, label embedding).

  Attributes:
    out_dim: output width; the output is [B, out_dim].
    hidden_widths: widths of the hidden layers, e.g. (256, 256, 256).
    condition_names: one sinusoidal embedding per scalar condition, in call order.
    num_classes: real classes (0: unconditional, labels ignored).
    embed_dim: width of each condition's sinusoidal features and of the label embedding.
    remat: recompute each hidden layer in the backward pass (saves activation memory).
    dtype: compute dtype of the hidden layers (parameters stay float32); the output is float32.
  """
  out_dim: int
  hidden_widths: Sequence[int] = (256, 256, 256)
  condition_names: Sequence[str] = ()
  num_classes: int = 0
  embed_dim: int = 64
  remat: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, conditions: Sequence[jax.Array] = (),
               labels: Optional[jax.Array] = None) -> jax.Array:
    if len(conditions) != len(self.condition_names):
      raise ValueError(f"MLP expects conditions {tuple(self.condition_names)}, got "
                       f"{len(conditions)} arrays.")
    parts = [x.reshape(x.shape[0], -1).astype(jnp.promote_types(self.dtype, jnp.float32))]
    parts += [timestep_features(jnp.reshape(c, (-1,)), self.embed_dim) for c in conditions]
    if self.num_classes > 0:
      if labels is None:
        raise ValueError(f"MLP has num_classes={self.num_classes} but got no labels.")
      parts.append(nn.Embed(self.num_classes + 1, self.embed_dim, name="label_embedding",
                            embedding_init=nn.initializers.normal(1.0))(labels))
    h = jnp.concatenate(parts, axis=-1)
    layer = nn.remat(_Hidden) if self.remat else _Hidden
    for i, width in enumerate(self.hidden_widths):
      h = layer(width, self.dtype, name=f"hidden_{i}")(h)
    # bf16 hidden layers feed a float32 output layer; float64 (exactness tests) stays float64.
    return nn.Dense(self.out_dim, name="out")(h.astype(jnp.promote_types(self.dtype, jnp.float32)))


class _Hidden(nn.Module):
  """silu(h W + b) with nn.Dense's parameters and initialisers, so the parameter tree is the same
  (hidden_i/kernel, hidden_i/bias) with or without remat."""
  width: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h):
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (h.shape[-1], self.width))
    bias = self.param("bias", nn.initializers.zeros_init(), (self.width,))
    h, kernel, bias = (a.astype(self.dtype) for a in (h, kernel, bias))
    return nn.silu(h @ kernel + bias)
