"""EDM-style geometric augmentation on device, with the labels that tell the network what was done.

Karras et al. (EDM) augment small data sets and condition the network on the transform, so that
sampling with all-zero labels gives un-augmented images. The MeanFlow CIFAR-10 recipe uses x-flip
(allowed for every image, taken with probability 1/2) and, each with probability p = 0.12,
isotropic scaling 2^(0.2 w), anisotropic scaling 2^(+-0.2 w) along an axis at angle r (r = 0 half
the time), and a fractional translation of 0.125 * size * w, w ~ N(0, 1).

Labels [B, 6] = (flip, w_scale, w_aniso cos r, w_aniso sin r, w_tx, w_ty); zeros = identity.
Geometry: output pixel p (x = column, y = row, centred at ((W-1)/2, (H-1)/2)) reads the flipped
input at G^-1 p with G^-1 = S_iso^-1 . A^-1 . T^-1 (inverse translation applied first); the read
is bilinear (jax.scipy.ndimage.map_coordinates) with mirror padding at the border. Unlike EDM, no
2x wavelet supersampling: a documented simplification, the labels still encode the transform exactly.
"""
import jax
import jax.numpy as jnp
import ml_collections

from mf_jax import config_fields
from mf_jax.config_fields import FRACTION, Field, boolean, number

LABEL_DIM = 6


# The `augment` config section (EDM's CIFAR-10 settings; off by default).
CONFIG = dict(
    # On: augment in the train step and feed the labels to the network (U-Net only).
    enabled=Field(False, boolean(), "False; True for the CIFAR-10 U-Net recipe"),
    p=Field(0.12, number(0.0), "0.12 (EDM CIFAR-10)"),  # Overall probability multiplier.
    # Probability multipliers per transform (xflip * p >= 1: every image may flip).
    xflip=Field(1e8, number(0.0), "1e8 (every image may flip)"),
    scale=Field(1.0, number(0.0), "1.0"),
    aniso=Field(1.0, number(0.0), "1.0"),
    translate=Field(1.0, number(0.0), "1.0"),
    scale_std=Field(0.2, number(0.0), "0.2"),  # log2 std of isotropic scaling.
    aniso_std=Field(0.2, number(0.0), "0.2"),  # log2 std of anisotropic scaling.
    # Probability that the anisotropic axis is rotated.
    aniso_rotate_prob=Field(0.5, FRACTION, "0.5"),
    # Translation std relative to the image size.
    translate_std=Field(0.125, number(0.0), "0.125"),
)


def default_config() -> ml_collections.ConfigDict:
  return config_fields.section(CONFIG)


def _draw(key, batch: int, config):
  """Per-sample transform parameters, each [B]; a transform not taken has parameter 0."""
  ks = jax.random.split(key, 10)
  take = lambda k, mult: jax.random.uniform(k, (batch,)) < mult * config.p
  flip = jnp.where(take(ks[0], config.xflip), jax.random.bernoulli(ks[1], 0.5, (batch,)), False)
  w_scale = jnp.where(take(ks[2], config.scale), jax.random.normal(ks[3], (batch,)), 0.0)
  w_aniso = jnp.where(take(ks[4], config.aniso), jax.random.normal(ks[5], (batch,)), 0.0)
  angle = jax.random.uniform(ks[6], (batch,), minval=-jnp.pi, maxval=jnp.pi)
  angle = jnp.where(jax.random.uniform(ks[7], (batch,)) < config.aniso_rotate_prob, angle, 0.0)
  w_t = jnp.where(take(ks[8], config.translate)[None], jax.random.normal(ks[9], (2, batch)), 0.0)
  return jnp.stack([flip.astype(jnp.float32), w_scale, w_aniso * jnp.cos(angle),
                    w_aniso * jnp.sin(angle), w_t[0], w_t[1]], axis=-1)


def inverse_matrices(labels, height: int, width: int, config):
  """[B, 6] labels -> [B, 3, 3] G^-1 mapping centred output pixel coordinates (x, y, 1) to input."""
  _, w_scale, a_cos, a_sin, w_tx, w_ty = labels.T
  s = jnp.exp2(w_scale * config.scale_std)
  w_aniso = jnp.sqrt(a_cos ** 2 + a_sin ** 2)
  angle = jnp.arctan2(a_sin, a_cos)  # (w, r) and (-w, r + pi) are the same transform.
  a = jnp.exp2(w_aniso * config.aniso_std)
  c, sn = jnp.cos(angle), jnp.sin(angle)
  zero, one = jnp.zeros_like(s), jnp.ones_like(s)
  mat = lambda *rows: jnp.stack([jnp.stack(r, -1) for r in rows], -2)
  scale_inv = mat((1 / s, zero, zero), (zero, 1 / s, zero), (zero, zero, one))
  rot = lambda cs, sn_: mat((cs, -sn_, zero), (sn_, cs, zero), (zero, zero, one))
  # Scale by a along the axis at angle r and by 1/a across it: R(r) diag(a, 1/a) R(-r); inverted.
  aniso_inv = rot(c, sn) @ mat((1 / a, zero, zero), (zero, a, zero), (zero, zero, one)) @ rot(c, -sn)
  tx, ty = w_tx * width * config.translate_std, w_ty * height * config.translate_std
  translate_inv = mat((one, zero, -tx), (zero, one, -ty), (zero, zero, one))
  return scale_inv @ aniso_inv @ translate_inv


def apply_labels(images, labels, config):
  """Applies the transform the labels describe to images [B, H, W, C]."""
  b, h, w, _ = images.shape
  flip = labels[:, 0] > 0.5
  images = jnp.where(flip[:, None, None, None], images[:, :, ::-1], images)
  g_inv = inverse_matrices(labels, h, w, config)
  cy, cx = (h - 1) / 2, (w - 1) / 2
  ys, xs = jnp.meshgrid(jnp.arange(h, dtype=images.dtype), jnp.arange(w, dtype=images.dtype),
                        indexing="ij")
  out = jnp.stack([xs - cx, ys - cy, jnp.ones_like(xs)], 0).reshape(3, -1)
  src = g_inv.astype(images.dtype) @ out  # [B, 3, H*W]
  src_x, src_y = src[:, 0].reshape(b, h, w) + cx, src[:, 1].reshape(b, h, w) + cy
  sample = lambda img, y, x: jax.scipy.ndimage.map_coordinates(img, [y, x], order=1, mode="mirror")
  per_channel = jax.vmap(sample, in_axes=(2, None, None), out_axes=2)
  return jax.vmap(per_channel)(images, src_y, src_x)


def augment(images, key, config):
  """(augmented images [B, H, W, C], labels [B, 6]); deterministic given the key."""
  labels = _draw(key, images.shape[0], config)
  return apply_labels(images, labels, config), labels
