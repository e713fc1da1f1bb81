"""The pixel MeanFlow network: iMF's in-context DiT on image patches, with x-prediction heads
(Lu et al., "One-step Latent-free Image Generation with Pixel Mean Flows", arXiv 2601.22158).

Checked against the official code (Lyy-iiis/pMF at 75f6073042c21f7104686261a0c4784db4ede9d1,
models/pmfDiT.py, embedder.py, torch_models.py; the H sizes from its `hsdp` and `torch` branches).
Everything not listed here is mf_jax/models/dit_incontext.py's (blocks, heads, prefix groups,
scalar embedders, initialisation):
  - patch embedding through a bottleneck: a p x p conv (stride p) to 128 channels (256 when the
    width exceeds 1024), then a 1 x 1 conv to the width, both with bias, xavier-uniform;
  - a learned absolute position embedding [1, 20 + N, w] ~ N(0, 0.02^2) added to the whole
    sequence (prefix included), and a 2-D rotary embedding on the N patch tokens only (pairs
    k < d/4 turn with the patch row, the others with its column; the prefix is not rotated);
  - the prefix offsets [1, n, w] and the label table [1, num_classes + 1, w] are 3-D, as the
    official ones (Muon routes parameters by rank, so the shapes decide what it trains);
  - the SwiGLU hidden width is rounded up to a multiple of 8 when the width exceeds 1024 (the H
    sizes; 3416 for w = 1280);
  - the heads output images: (x_u, x_v), each [B, H, W, C] (x_v None in the inference model,
    which has neither the v blocks nor the v output layer). The objective turns x into a
    velocity, u = (z_t - x_u) / clip(t, 0.05, 1); the network never sees t.
"""
import math

import flax.linen as nn

from mf_jax.models import dit_incontext
from mf_jax.models.dit_incontext import PREFIX_GROUPS

# name -> (depth of the u path (trunk + u head), width, heads); the patch comes from "/p".
# Released: B/16, L/16, H/16 (256 x 256) and B/32, L/32, H/32 (512 x 512).
VARIANTS = {
    "B": (16, 768, 12),
    "L": (32, 1024, 16),
    "H": (48, 1280, 16),
}
WIDE = 1024  # Above this width: 256 bottleneck channels and the SwiGLU width rounded to 8.


def bottleneck_channels(width: int) -> int:
  return 256 if width > WIDE else 128


class BottleneckPatchEmbed(nn.Module):
  """x [B, H, W, C] -> [B, H/p * W/p, width] (row-major): p x p conv to `channels`, then 1 x 1."""
  width: int
  patch: int
  channels: int

  @nn.compact
  def __call__(self, x):
    conv = lambda n, k, name: nn.Conv(
        n, (k, k), strides=(k, k),
        kernel_init=nn.initializers.xavier_uniform(in_axis=(0, 1, 2), out_axis=-1), name=name)
    x = conv(self.width, 1, "expand")(conv(self.channels, self.patch, "reduce")(x))
    return x.reshape(x.shape[0], -1, self.width)


class LabelTable(nn.Module):
  """labels [B] -> [B, width] from a [1, num_classes + 1, width] table (the official 3-D shape)."""
  rows: int
  width: int

  @nn.compact
  def __call__(self, labels):
    table = self.param("embedding", nn.initializers.normal(1.0 / math.sqrt(self.width)),
                       (1, self.rows, self.width))
    return table[0][labels]


class PixelDiT(dit_incontext.InContextDiT):
  """The pMF network (see the module docstring). Returns (x_u, x_v): images, not velocities.

  Attributes as InContextDiT's; variant NAME/PATCH with NAME in VARIANTS ('B/16' ... 'H/32').
  """
  variant: str = "B/16"
  image_size: int = 256
  channels: int = 3

  def variants(self):
    return VARIANTS, "B/16"

  def head_width_multiple(self) -> int:
    return 4  # Two rotary halves (rows, columns) of channel pairs.

  def block_options(self, width, patch):
    return dict(rope_grid=self.image_size // patch, mlp_multiple=8 if width > WIDE else 1)

  def embed_patches(self, x, width, p):
    return BottleneckPatchEmbed(width, p, bottleneck_channels(width), name="patch_embed")(x)

  def token_shape(self, n, width):
    return (1, n, width)

  def label_embedding(self, labels, width):
    return LabelTable(self.num_classes + 1, width, name="label_embedder")(labels)

  def add_positions(self, tokens):
    table = self.param("pos_embed", nn.initializers.normal(0.02), (1,) + tokens.shape[1:])
    return tokens + table


def num_tokens(image_size: int, patch: int) -> int:
  """Sequence length: the prefix groups, then (image_size / patch)^2 patches."""
  return sum(n for _, n in PREFIX_GROUPS) + (image_size // patch) ** 2


def count_params(variant: str, v_head: bool = True, image_size: int = 256, channels: int = 3,
                 num_classes: int = 1000, **fields) -> int:
  """Parameter count from shapes alone (jax.eval_shape): nothing is allocated."""
  return dit_incontext.param_count(PixelDiT(variant=variant, v_head=v_head, image_size=image_size,
                                            channels=channels, num_classes=num_classes, **fields))
