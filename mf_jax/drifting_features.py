"""Drifting's feature spaces: raw samples, a frozen encoder's multi-scale statistics, ConvNeXt sets.

A feature function maps samples [B, H, W, C] to named feature sets {name: [B, L, C]}; the drifting
field (mf_jax/drifting.py) normalises each set on its own. For each stage map [B, H, W, C] of an
encoder: the per-location vectors, the global mean and std, and the mean and std of each 2x2 and
4x4 patch (non-overlapping p x p windows), so a coarse statistic is not drowned by the many
per-location vectors. The raw sample is added as one more set.
"""
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from mf_jax import drifting, networks
from mf_jax.models import convnext, release_features

Array = jax.Array


def multiscale_statistics(fmap: Array, patch_sizes: Sequence[int] = (2, 4),
                          eps: float = 1e-6) -> Mapping[str, Array]:
  """Feature sets of one map [B, H, W, C]: 'loc' [B, HW, C], 'global' [B, 2, C] (mean, std) and,
  for each patch size p < H that divides H and W, 'patch{p}' [B, 2 (H/p)(W/p), C] (means, then
  stds). std = sqrt(var + eps) keeps the gradient finite where a patch is constant."""
  b, h, w, c = fmap.shape
  fmap = fmap.astype(jnp.float32)
  out = {"loc": fmap.reshape(b, h * w, c)}
  mean = jnp.mean(fmap, axis=(1, 2))
  std = jnp.sqrt(jnp.var(fmap, axis=(1, 2)) + eps)
  out["global"] = jnp.stack([mean, std], axis=1)
  for p in patch_sizes:
    if p >= h or h % p or w % p:
      continue
    windows = fmap.reshape(b, h // p, p, w // p, p, c)
    p_mean = jnp.mean(windows, axis=(2, 4)).reshape(b, -1, c)
    p_std = jnp.sqrt(jnp.var(windows, axis=(2, 4)) + eps).reshape(b, -1, c)
    out[f"patch{p}"] = jnp.concatenate([p_mean, p_std], axis=1)
  return out


def encoder_feature_fn(features_fn: Callable[[Array], Sequence[Array]],
                       patch_sizes: Sequence[int] = (2, 4),
                       include_raw: bool = True) -> drifting.FeatureFn:
  """A drifting feature function from an encoder: x -> {'stage{s}/{stat}': [B, L, C], 'raw': ...}.

  features_fn maps latents to the list of stage maps, e.g.
  lambda x: mae.apply(frozen_params, x, method=MaskedAutoencoder.features).
  """
  def feature_fn(x: Array) -> Mapping[str, Array]:
    out = {}
    for s, fmap in enumerate(features_fn(x)):
      for name, f in multiscale_statistics(fmap, patch_sizes).items():
        out[f"stage{s}/{name}"] = f
    if include_raw:
      out.update(drifting.raw_features(x))
    return out
  return feature_fn


def drifting_feature_fn(config, encoder_params, convnext_variables=None) -> drifting.FeatureFn:
  """Raw samples, or the frozen encoder's multi-scale statistics plus the raw samples; with
  ConvNeXt variables (drifting.use_convnext, pixels) also its feature sets, as the release's
  pixel configs: the MAE's sets and ConvNeXt's side by side, each normalised on its own."""
  extra = ()
  if convnext_variables is not None:
    extra = (convnext.convnext_feature_fn(networks.convnext_model(config), convnext_variables),)
  if encoder_params is None:
    if not extra:
      return drifting.raw_features
    return release_features.release_feature_fn(None, extra_fns=extra)
  encoder = networks.mae_model(config)
  if config.mae.arch == "release":  # The release's feature-key set.
    return release_features.release_feature_fn(
        lambda x: encoder.apply(encoder_params, x, method=encoder.activations),
        every_k_block=config.mae.every_k_block, extra_fns=extra)
  feature_fn = encoder_feature_fn(
      lambda x: encoder.apply(encoder_params, x, method=encoder.features))
  if not extra:
    return feature_fn
  return lambda x: dict(feature_fn(x), **extra[0](x))
