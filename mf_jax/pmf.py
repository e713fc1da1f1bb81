"""The pixel MeanFlow (pMF) objective and sampler as pure functions of a network function.

Lu et al., "One-step Latent-free Image Generation with Pixel Mean Flows" (arXiv 2601.22158);
checked against the official JAX code (Lyy-iiis/pMF, pmf.py at 75f6073). pMF is improved MeanFlow
(mf_jax/imf.py) on pixels, with four changes:

- x-prediction: the network outputs images x_u, x_v [B, H, W, C]; the velocities are
    u = (z_t - x_u) / clip(t, t_clip, 1),   v = (z_t - x_v) / clip(t, t_clip, 1),
  inside the function the jvp differentiates, so du/dt (tangent t: 1) includes d(1/t)/dt.
- noise e ~ N(0, s^2), s = noise_scale, in training and at sampling; the conditional velocity is
  v_t = (z_t - x) / clip(t, t_clip, 1) (= e - x for t >= t_clip).
- times: the r = t half of the batch keeps one logit-normal draw (time_pairing "sort_eq_one_draw").
- a perceptual term on pred_x = z_t - t u (= x_u for t >= t_clip), on rows with t < perceptual_max_t:
  the same random resized crop of pred_x and the real x (mf_jax/perceptual.py), then
    lpips_weight w(LPIPS(pred, x)) + convnext_weight w(|f(pred) - f(x)|^2),
  f the pooled ConvNeXt-V2 features, each adaptively weighted like the main terms,
  w(d) = d / sg((d + c)^p).

Conventions as mf_jax/imf.py: t = 0 is data, t = 1 is noise, z_t = (1 - t) x + t e, r <= t;
per-sample scalars [B]; the null label is `num_classes`. The image network is
image_net(z, t, h, omega, t_min, t_max, labels) -> (x_u, x_v) (x_v None without the v head).
"""
from typing import Callable, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections

from mf_jax import config_fields, imf, perceptual
from mf_jax.config_fields import Field, int_tuple, number, text

Array = jax.Array
# perceptual_fn(pred_x, x, boxes) -> (lpips [b], convnext [b]): the two distances of each row on
# its crop box (perceptual.crop_boxes), or None when neither term is used.
PerceptualFn = Callable[[Array, Array, Array], Tuple[Array, Array]]


def _with_default(field: Field, default, fix: str) -> Field:
  return field._replace(default=default, fix=fix)


# The `pmf` config section: iMF's fields (the same names and rules), pMF's defaults (the official
# pMF-B/16 config), and pMF's own fields.
CONFIG = dict(
    imf.CONFIG,
    time_mu=_with_default(imf.CONFIG["time_mu"], 0.8, "0.8 (pMF; 0.0 for L/32)"),
    time_sigma=_with_default(imf.CONFIG["time_sigma"], 0.8, "0.8 (pMF)"),
    time_pairing=_with_default(imf.CONFIG["time_pairing"], "sort_eq_one_draw",
                               "sort_eq_one_draw (pMF: r = t rows keep one draw)"),
    omega_beta=_with_default(imf.CONFIG["omega_beta"], 1.0, "1.0 (pMF; 2.0 for L/16)"),
    noise_scale=Field(1.0, number(0.0, lo_open=True),
                      "1.0 (pMF /16 at 256), 2.0 (B/32), 4.0 (L/32)"),
    t_clip=Field(0.05, number(0.0, 1.0, lo_open=True), "0.05 (pMF)"),
    lpips_weight=Field(0.4, number(0.0), "0.4 (pMF), or 0 (no LPIPS term)"),
    convnext_weight=Field(0.1, number(0.0), "0.1 (pMF), or 0 (no ConvNeXt term)"),
    perceptual_max_t=Field(0.8, number(0.0, 1.0), "0.8 (pMF; 0.6 for L/32)"),
    crop_size=Field(224, number(1), "224 (the perceptual networks' input size)", shape=True),
    # Frozen perceptual networks: files written by the converters (docs/converters.md).
    lpips_path=Field("", text(), "the .npz of `python -m mf_jax.convert lpips_vgg16 ...`, or ''"),
    convnext_path=Field("", text(), "the .npz of `python -m mf_jax.convert convnext ...`, or ''"),
    convnext_depths=Field((3, 3, 27, 3), int_tuple(), "(3, 3, 27, 3) (ConvNeXt-V2-Base)",
                          shape=True),
    convnext_dims=Field((128, 256, 512, 1024), int_tuple(),
                        "(128, 256, 512, 1024) (ConvNeXt-V2-Base)", shape=True),
)


def default_config() -> ml_collections.ConfigDict:
  """The `pmf` section's defaults."""
  return config_fields.section(CONFIG)


def uses_perceptual(config) -> Tuple[bool, bool]:
  """(LPIPS term on, ConvNeXt term on) for a `pmf` section."""
  return config.lpips_weight > 0, config.convnext_weight > 0


# --- x-prediction.

def x_to_velocity(z: Array, x_hat: Array, t: Array, t_clip: float) -> Array:
  """(z - x_hat) / clip(t, t_clip, 1): the velocity of an image prediction, [B, ...]."""
  return (z - x_hat) / imf.per_row(jnp.clip(t, t_clip, 1.0), z)


def velocity_net(image_net, t_clip: float) -> imf.NetFn:
  """The iMF network function (u, v) of an image network (x_u, x_v): x-prediction."""
  def net(z, t, h, omega, t_min, t_max, labels):
    x_u, x_v = image_net(z, t, h, omega, t_min, t_max, labels)
    v = None if x_v is None else x_to_velocity(z, x_v, t, t_clip)
    return x_to_velocity(z, x_u, t, t_clip), v
  return net


# --- Draws.

def sample_draws(key: Array, x: Array, config) -> Tuple[imf.Draws, Array]:
  """(iMF's draws with pMF's times and noise scale, crop boxes [B, 4]) for pixels x [B, H, W, C].

  A box row is (top, left, height, width) of perceptual.crop_boxes."""
  k_draws, k_crop = jax.random.split(key)
  draws = imf.sample_draws(k_draws, x, config)
  draws = draws._replace(e=draws.e * config.noise_scale)
  boxes = perceptual.crop_boxes(k_crop, x.shape[0], x.shape[1], x.shape[2])
  return draws, jnp.stack(boxes, axis=1)


def conditional_velocity(x: Array, z: Array, t: Array, t_clip: float) -> Array:
  """v_t = (z_t - x) / clip(t, t_clip, 1), [B, ...]."""
  return x_to_velocity(z, x, t, t_clip)


def perceptual_fn_of(lpips_fn, convnext_fn, crop_size: int) -> Optional[PerceptualFn]:
  """The PerceptualFn of frozen-network closures (mf_jax/perceptual.py; either may be None): both
  images cut by the rows' boxes and resampled to crop_size, then each term's distance [b]."""
  if lpips_fn is None and convnext_fn is None:
    return None
  def distances(pred_x, x, boxes):
    return perceptual.perceptual_distances(tuple(boxes[:, i] for i in range(4)), pred_x, x,
                                           lpips_fn, convnext_fn, crop_size)
  return distances


# --- Loss.

def perceptual_terms(part: imf.Part, perceptual_fn: PerceptualFn,
                     config) -> Tuple[Array, Array, Array]:
  """Sums over a part's rows of (the weighted perceptual loss, LPIPS, ConvNeXt distance).

  pred_x = z_t - t u; rows with t >= perceptual_max_t contribute zero (their distances are still
  computed: masking keeps the shapes static).
  """
  rows = part.rows
  pred_x = rows["z"] - imf.per_row(rows["t"], part.u) * part.u
  d_lpips, d_convnext = perceptual_fn(pred_x, rows["x"], rows["crop_boxes"])
  keep = rows["t"] < config.perceptual_max_t
  d_lpips = jnp.where(keep, d_lpips, 0.0)
  d_convnext = jnp.where(keep, d_convnext, 0.0)
  p, c = config.adaptive_p, config.adaptive_c
  w = lambda d: d * jax.lax.stop_gradient(1.0 / jnp.power(d + c, p))
  weighted = config.lpips_weight * w(d_lpips) + config.convnext_weight * w(d_convnext)
  return jnp.sum(weighted), jnp.sum(d_lpips), jnp.sum(d_convnext)


def _loss(parts, batch: int, config, perceptual_fn) -> Tuple[Array, Mapping[str, Array]]:
  loss, metrics = imf.imf_loss_terms(parts, batch, config)
  if perceptual_fn is None:
    return loss, metrics
  sums = [perceptual_terms(q, perceptual_fn, config) for q in parts]
  weighted, d_lpips, d_convnext = (sum(s[i] for s in sums) / batch for i in range(3))
  loss = loss + weighted
  return loss, dict(metrics, loss=loss, loss_lpips=d_lpips, loss_convnext=d_convnext)


def _inputs(x, draws, boxes, config):
  z = imf.noisy_sample(x, draws.e, draws.t)
  return z, conditional_velocity(x, z, draws.t, config.t_clip), dict(x=x, crop_boxes=boxes)


def pmf_loss_from_draws(net_fn: imf.NetFn, x: Array, labels: Array, draws: imf.Draws,
                        boxes: Array, config, perceptual_fn: Optional[PerceptualFn] = None
                        ) -> Tuple[Array, Mapping[str, Array]]:
  """The pMF loss for pixels x [B, H, W, C], labels [B], given draws and crop boxes [B, 4]: the
  reference form, every network call on the whole batch. net_fn gives velocities (velocity_net).

  Metrics: loss, loss_u, loss_v (as iMF), and with perceptual_fn loss_lpips and loss_convnext, the
  batch means of the masked, unweighted distances (as the official code logs them).
  """
  z, v_t, extra = _inputs(x, draws, boxes, config)
  part = imf.imf_whole_batch(net_fn, z, v_t, labels, draws, config, extra)
  return _loss((part,), x.shape[0], config, perceptual_fn)


def pmf_loss_split_from_draws(net_fn: imf.NetFn, x: Array, labels: Array, draws: imf.Draws,
                              boxes: Array, config, perceptual_fn: Optional[PerceptualFn] = None
                              ) -> Tuple[Array, Mapping[str, Array]]:
  """pmf_loss_from_draws per part (imf.imf_split_parts): the same loss and gradient, fewer network
  calls; needs the row layout of sample_draws."""
  z, v_t, extra = _inputs(x, draws, boxes, config)
  parts = imf.imf_split_parts(net_fn, z, v_t, labels, draws, config, extra)
  return _loss(parts, x.shape[0], config, perceptual_fn)


def pmf_loss(net_fn: imf.NetFn, x: Array, labels: Array, key: Array, config,
             perceptual_fn: Optional[PerceptualFn] = None) -> Tuple[Array, Mapping[str, Array]]:
  """The whole pMF training loss for pixels x [B, H, W, C] and labels [B] (config: the pmf section)."""
  draws, boxes = sample_draws(key, x, config)
  return pmf_loss_split_from_draws(net_fn, x, labels, draws, boxes, config, perceptual_fn)


def sample(net_fn: imf.NetFn, noise: Array, labels: Array, num_steps: int, omega: float,
           t_min: float, t_max: float, noise_scale: float) -> Array:
  """k-NFE sampling from standard normal noise [B, H, W, C], scaled by noise_scale to z_1; the
  u-head update of imf.sample. With one step the sample is the network's x_u at t = 1."""
  return imf.sample(net_fn, noise * noise_scale, labels, num_steps, omega, t_min, t_max)
