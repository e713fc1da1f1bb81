"""The Drifting Models release's feature sets: encoder activations -> {name: [N, L, C]}.

Each entry is one feature set for the drifting loss, which normalises every set on its own
(mf_jax/drifting.py: its own mean distance and its own field RMS). The names are the release's
(github.com/lambertae/drifting at accd0cf0), so its logs and ours line up:

  global               the raw sample, one vector [N, 1, H*W*C];
  norm_x               per channel of the folded input, sqrt(mean over locations of x^2 + 1e-6);
  for each map M of {conv1 (the stem), layer1..layer4 (normalised stage outputs), and
  layer{s}_blk{j} (the output of block j, 1-based, of stage s, for every j divisible by k)}:
    M                  every location [N, h*w, C];
    M_mean, M_std      over all locations, [N, 1, C];
    M_mean_P, M_std_P  over each non-overlapping P x P window, [N, (h/P)(w/P), C], for P in
                       patch_sizes that divide h and w (a window may cover the whole map).
Standard deviations are sqrt(max(var, 0) + 1e-6) (finite gradients where a window is
constant). All statistics are taken in at least float32, whatever the encoder's compute dtype.
"""
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array
STD_EPS = 1e-6


def at_least_f32(x: Array) -> Array:
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def safe_std(x: Array, axis, eps: float = STD_EPS) -> Array:
  x = at_least_f32(x)
  var = jnp.mean(jnp.square(x - jnp.mean(x, axis=axis, keepdims=True)), axis=axis)
  return jnp.sqrt(jnp.maximum(var, 0.0) + eps)


def map_statistics(name: str, fmap: Array, patch_sizes: Sequence[int] = (2, 4)) -> Mapping[str, Array]:
  """The feature sets of one map [N, h, w, C] (see the module docstring)."""
  n, h, w, c = fmap.shape
  fmap = at_least_f32(fmap)
  out = {name: fmap.reshape(n, h * w, c),
         f"{name}_mean": jnp.mean(fmap, axis=(1, 2))[:, None],
         f"{name}_std": safe_std(fmap, (1, 2))[:, None]}
  windows = {p: fmap.reshape(n, h // p, p, w // p, p, c) for p in patch_sizes
             if h % p == 0 and w % p == 0}
  for p, win in windows.items():
    out[f"{name}_mean_{p}"] = jnp.mean(win, axis=(2, 4)).reshape(n, -1, c)
  for p, win in windows.items():
    out[f"{name}_std_{p}"] = safe_std(win, (2, 4)).reshape(n, -1, c)
  return out


def mae_feature_sets(activations: Mapping[str, Any], patch_sizes: Sequence[int] = (2, 4),
                     every_k_block: int = 2) -> Mapping[str, Array]:
  """norm_x and the statistics of the stem, stage and every k-th block maps (MAEResNet.activations).

  every_k_block = 0 leaves the block maps out.
  """
  xp = at_least_f32(activations["input"])
  out = {"norm_x": jnp.sqrt(jnp.mean(jnp.square(xp), axis=(1, 2)) + 1e-6)[:, None]}
  out.update(map_statistics("conv1", activations["stem"], patch_sizes))
  for s, fmap in enumerate(activations["stages"]):
    out.update(map_statistics(f"layer{s + 1}", fmap, patch_sizes))
  if every_k_block >= 1:
    for s, outs in enumerate(activations["blocks"]):
      for j, fmap in enumerate(outs, start=1):
        if j % every_k_block == 0:
          out.update(map_statistics(f"layer{s + 1}_blk{j}", fmap, patch_sizes))
  return out


def raw_feature_set(x: Array) -> Mapping[str, Array]:
  """The release's 'global' set: each raw sample as one vector [N, 1, prod(sample shape)]."""
  return {"global": x.reshape(x.shape[0], 1, -1)}


def release_feature_fn(mae_activations_fn, patch_sizes: Sequence[int] = (2, 4),
                       every_k_block: int = 2, extra_fns: Sequence[Any] = ()):
  """A drifting feature function x -> {name: [N, L, C]}: 'global', then the MAE's sets, then the
  sets of each extra_fns entry (e.g. ConvNeXt features for pixel models).

  mae_activations_fn: x -> MAEResNet.activations(x) with frozen parameters (None: no MAE).
  """
  def feature_fn(x: Array) -> Mapping[str, Array]:
    out = dict(raw_feature_set(x))
    if mae_activations_fn is not None:
      out.update(mae_feature_sets(mae_activations_fn(x), patch_sizes, every_k_block))
    for fn in extra_fns:
      out.update(fn(x))
    return out
  return feature_fn
