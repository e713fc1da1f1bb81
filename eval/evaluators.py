"""In-training evaluator plug-ins (big_vision style): callables `scalars = evaluator(state, step)`.

`build_evaluators(config, model, mesh, sample_fn)` returns the list the trainer runs every
config.eval.every_steps and `python main.py --mode=eval` runs once. The sample-quality evaluator:
  for each k in config.eval.num_steps (k-NFE sampling):
    for each chunk of config.eval.batch_size:
      noise, labels (seeded by config.eval.seed and the chunk index) -> sample_fn, split over every
      device -> decode (identity for pixel data; see make_decoder) -> uint8 -> features on the
      devices -> per-device moments merged with psum (eval.stats.sharded_moments) -> float64
      StatsAccumulator on the host
    FID against the reference statistics (and the Inception Score from the gathered logits).
Scalars: "fd_pixels_{k}nfe" for config.eval.features = "pixels" (Frechet distance of raw pixels in
[0, 1], against the held-out split; no Inception needed), "fid_{k}nfe" and "is_{k}nfe" for
"inception". The last chunk is padded to the batch size and its padding masked out of the moments,
so num_samples need not be a multiple of batch_size. With fewer samples than feature dimensions (a
quick in-training FID, tests) the features themselves are kept and the distance is computed from
them exactly in O(n D^2) (`frechet_distance_from_samples`) instead of O(D^3).
"""
import functools
import os
import time
from typing import Any, Callable, Dict, List, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

import input_pipeline
from eval import fid, stats
from eval import config as eval_config
from eval.config import FEATURES
from mf_jax import config_fields, generate
from mf_jax import ema as ema_lib
from mf_jax.generate import quantize_uint8  # The rounding every sample path shares.
from mf_jax import sharding as sharding_lib

RANDOM_INCEPTION = "random"  # eval.inception_path value that selects random weights (tests only).
IS_SPLITS = 10  # The standard Inception Score splits; one split below 2 * IS_SPLITS samples.
PROGRESS_LINES = 10  # Progress log lines per k-NFE pass, at most (plus the last chunk).


# ---------------------------------------------------------------------------------------------
# Config checks, before any sampling, network loading or compilation.

def _inception_weights_path(ev) -> str:
  return ev.inception_path or fid.DEFAULT_INCEPTION_PATH


def num_steps_tuple(ev) -> tuple:
  steps = ev.num_steps
  return (steps,) if isinstance(steps, int) else tuple(steps)


def validate_config(config) -> None:
  """Raises ValueError / FileNotFoundError naming the bad config.eval field and the fix."""
  ev = config.eval
  config_fields.check(eval_config.CONFIG, ev, "eval.")  # Each field's rule (eval/config.py).
  devices = jax.device_count()
  if ev.batch_size % devices:
    raise ValueError(f"eval.batch_size={ev.batch_size} must be a positive multiple of the device "
                     f"count ({devices}), e.g. {devices * max(1, ev.batch_size // devices)}.")
  if ev.cfg_scale != 1.0 and config.data.num_classes < 1:
    raise ValueError(f"eval.cfg_scale={ev.cfg_scale} needs a class-conditional model; "
                     "data.num_classes is 0. Use eval.cfg_scale=1.0.")
  if ev.cfg_scales and config.data.num_classes < 1:
    raise ValueError(f"eval.cfg_scales={tuple(ev.cfg_scales)} needs a class-conditional model; "
                     "data.num_classes is 0. Use eval.cfg_scales=().")
  if ev.use_ema and not 0 <= ema_lib.ema_index(config, "eval") < ema_lib.num_emas(config):
    raise ValueError(f"eval.use_ema=True with eval.ema_index={ev.ema_index}, but "
                     f"{ema_lib.definition(config)} has {ema_lib.num_emas(config)} entries: pick "
                     "an existing index or set eval.use_ema=False.")
  if generate.decodes_with_vae(config) and not config.data.vae_path:
    raise ValueError(f"eval on latent data (data.name={config.data.name!r}) needs data.vae_path: "
                     "local SD-VAE weights (a diffusers AutoencoderKL folder) to decode samples. "
                     "Pixel data sets (e.g. imagenet_pixels) need none.")
  if ev.ref_stats and not os.path.isfile(ev.ref_stats):
    raise FileNotFoundError(f"eval.ref_stats={ev.ref_stats!r} not found. Make it with `python -m "
                            "eval.fid --images=DIR_OR_NPZ --write_stats=OUT.npz` (same features).")
  if ev.features == "inception":
    if not ev.ref_stats:
      raise ValueError("eval.features='inception' needs eval.ref_stats: an .npz with mu/sigma of "
                       "the reference set (e.g. ADM's VIRTUAL_imagenet256_labeled.npz, or one "
                       "written by `python -m eval.fid --images=... --write_stats=...`).")
    path = _inception_weights_path(ev)
    if ev.inception_path != RANDOM_INCEPTION and not os.path.isfile(path):
      from mf_jax.convert.formats import inception as inception_format  # pylint: disable=g-import-not-at-top
      raise FileNotFoundError(f"eval.inception_path={ev.inception_path!r}: "
                              + inception_format.missing_weights_message(path))


# ---------------------------------------------------------------------------------------------
# Pieces: decoding, quantisation, feature sets.

def make_decoder(config) -> Callable[[jax.Array], jax.Array]:
  """Model output -> pixels in [-1, 1], [B, H, W, C], keeping the batch sharding.

  Called outside the evaluator's own jit, so a decoder can be a jitted function that closes over
  its weights (e.g. the SD-VAE) without making them compile-time constants. Pixel-space data decodes
  to itself.
  """
  if generate.decodes_with_vae(config):
    if not config.data.vae_path:
      raise ValueError(f"eval on latent data (data.name={config.data.name!r}) needs "
                       "data.vae_path: local SD-VAE weights to decode the samples before Inception.")
    return generate.load_decoder(*generate.decoder_settings(config))
  return lambda x: x


def frechet_distance_from_samples(x: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
  """Frechet distance of the Gaussian fitted to samples x [n, D] against (mu2, sigma2), n <= D.

  With C the centred samples, S1 = C^T C / (n - 1), and S1 S2 has the same nonzero eigenvalues as
  the n x n PSD matrix C S2 C^T / (n - 1), so tr sqrt(S1 S2) needs no D x D decomposition.
  """
  x = np.asarray(x, np.float64)
  n = len(x)
  mu1 = x.mean(axis=0)
  centred = x - mu1
  small = centred @ np.asarray(sigma2, np.float64) @ centred.T / (n - 1)
  eig = np.linalg.eigvalsh((small + small.T) / 2)
  eig = np.where(eig > n * np.finfo(np.float64).eps * np.max(np.abs(eig), initial=0.0), eig, 0.0)
  diff = mu1 - mu2
  value = (diff @ diff + np.sum(centred * centred) / (n - 1) + np.trace(sigma2)
           - 2 * np.sum(np.sqrt(eig)))
  return float(max(value, 0.0))


class FeatureSet(NamedTuple):
  """What a feature choice needs: a jittable extract, its reference statistics, scalar names.

  extract(feature_params, images uint8 [B, H, W, channels]) -> (features [B, D] float32, logits
  [B, K] or None), jitted once per process (a new evaluator reuses the compilation). ref_mu [D],
  ref_sigma [D, D] float64.
  """
  name: str
  channels: int  # What extract takes: grayscale is repeated to RGB for Inception.
  extract: Callable[[Any, jax.Array], Any]
  params: Any
  ref_mu: np.ndarray
  ref_sigma: np.ndarray
  scalar_prefixes: Dict[str, str]  # {"fd": "fd_pixels"} or {"fd": "fid", "is": "is"}


@jax.jit
def _pixel_extract(params, images):
  del params
  # The device twin of eval.fid.pixel_features: uint8 -> [0, 1], flattened.
  return images.reshape(images.shape[0], -1).astype(jnp.float32) / 255.0, None


def pixel_reference_stats(config):
  """mu, sigma of the held-out split's pixels, quantised exactly like the samples."""
  try:
    x = input_pipeline.eval_arrays(config)["x"]
  except NotImplementedError as e:
    raise ValueError(f"eval.features='pixels' with empty eval.ref_stats needs a held-out split: "
                     f"{e} Give eval.ref_stats (pixel statistics .npz) instead.") from None
  return stats.stats_from_features(fid.pixel_features(generate.to_uint8(x, config)))


def _load_ref_stats(path: str, dim: int, feature: str):
  mu, sigma = fid.load_stats(path)
  if mu.shape != (dim,):
    raise ValueError(f"eval.ref_stats={path!r} holds {mu.shape[0]}-d statistics but "
                     f"eval.features={feature!r} gives {dim}-d features.")
  with np.load(path) as data:
    tag = str(data["feature"]) if "feature" in data.files else None
  return mu, sigma, tag


def pixel_feature_set(config) -> FeatureSet:
  d = config.data
  dim = d.image_size * d.image_size * d.channels
  if config.eval.ref_stats:
    mu, sigma, _ = _load_ref_stats(config.eval.ref_stats, dim, "pixels")
  else:
    mu, sigma = pixel_reference_stats(config)
  return FeatureSet("pixels", d.channels, _pixel_extract, None, mu, sigma, {"fd": "fd_pixels"})


@functools.lru_cache(maxsize=1)
def _random_inception_params():
  # Kept: tests build several random-weight evaluators, and drawing 24M values takes seconds.
  from eval import inception  # pylint: disable=g-import-not-at-top
  return inception.random_inception_params(jax.random.key(0))


def inception_feature_set(config, mesh) -> FeatureSet:
  from eval import inception  # pylint: disable=g-import-not-at-top
  ev = config.eval
  random_weights = ev.inception_path == RANDOM_INCEPTION
  mu, sigma, tag = _load_ref_stats(ev.ref_stats, inception.POOL_DIM, "inception")
  expected = "inception_pool_random" if random_weights else "inception_pool"
  if tag is not None and tag != expected:
    raise ValueError(f"eval.ref_stats={ev.ref_stats!r} holds {tag!r} features but "
                     f"eval.inception_path={ev.inception_path!r} gives {expected!r}.")
  if not generate.decodes_with_vae(config) and config.data.channels not in (1, 3):
    # (Latents decode to RGB through the VAE.)
    raise ValueError(f"eval.features='inception' needs 1- or 3-channel images, data.channels="
                     f"{config.data.channels}.")
  apply_fn = inception.make_apply_fn("tf1")
  if random_weights:
    logging.warning("eval.inception_path='random': random Inception weights, the numbers test "
                    "the pipeline only and are not FID.")
    params = _random_inception_params()
  else:
    _, params = inception.load_inception(_inception_weights_path(ev))
  params = jax.device_put(params, sharding_lib.replicated(mesh))

  def extract(params, images):
    out = apply_fn(params, images)  # Cached jit: one Inception compilation per process.
    return out["pool"], out["logits_unbiased"]

  return FeatureSet("inception", 3, extract, params, mu, sigma, {"fd": "fid", "is": "is"})


# ---------------------------------------------------------------------------------------------
# The evaluator.

class SampleQualityEvaluator:
  """Samples with the model, extracts features on the devices, reports FD (and IS) per NFE."""

  def __init__(self, config, mesh, sample_fn, features: FeatureSet,
               decode: Callable[[jax.Array], jax.Array]):
    self.config, self.mesh, self.sample_fn, self.features = config, mesh, sample_fn, features
    self.name = f"sample_quality_{features.name}"
    ev, d = config.eval, config.data
    self.num_samples, self.batch_size = int(ev.num_samples), int(ev.batch_size)
    self.num_steps = num_steps_tuple(ev)
    batch = sharding_lib.batch_sharding(mesh)
    shape = (self.batch_size, d.image_size, d.image_size, d.channels)
    bs, n = self.batch_size, self.num_samples
    label_sampling = ev.label_sampling
    rounding = ev.uint8_rounding

    @functools.partial(jax.jit, out_shardings=(batch, batch, batch))
    def chunk_inputs(key, start):
      noise, labels = generate.sample_inputs(key, start, bs, shape[1:], d.num_classes,
                                             label_sampling)
      return noise, labels, (start + jnp.arange(bs) < n).astype(jnp.float32)

    def to_images(pixels):
      images = quantize_uint8(pixels, rounding)
      if images.shape[-1] != features.channels:  # Grayscale: the same value in R, G and B.
        images = jnp.repeat(images, features.channels // images.shape[-1], axis=-1)
      return images

    self._chunk_inputs = chunk_inputs
    self._decode = decode
    self._to_images = jax.jit(to_images)

  def _params(self, state):
    ev = self.config.eval
    if not ev.use_ema:
      return state.params
    return state.ema_params[ema_lib.ema_index(self.config, "eval")]

  def statistics(self, params, num_steps: int, cfg_scale: float = None, interval=None):
    """(StatsAccumulator of all num_samples features, [num_samples, K] logits or None,
    [num_samples, D] features when num_samples <= D else None)."""
    ev = self.config.eval
    keep_features = self.num_samples <= len(self.features.ref_mu)
    acc, logits, kept = None, [], []
    num_chunks = -(-self.num_samples // self.batch_size)
    log_every = max(1, num_chunks // PROGRESS_LINES)
    start_time = time.perf_counter()
    for i in range(num_chunks):
      start = i * self.batch_size
      key = jax.random.fold_in(jax.random.key(ev.seed), i)
      noise, labels, mask = self._chunk_inputs(key, start)
      scale = float(ev.cfg_scale if cfg_scale is None else cfg_scale)
      guidance = (scale,) if interval is None else (scale, interval)
      x = self.sample_fn(params, noise, labels, num_steps, *guidance)
      images = self._to_images(self._decode(x))
      feats, chunk_logits = self.features.extract(self.features.params, images)
      count, mean, m2 = fid.sharded_moments(feats, self.mesh, sharding_lib.BATCH_AXES, mask)
      if acc is None:
        acc = fid.StatsAccumulator(mean.shape[0])
      acc.update_moments(count, mean, m2)
      if chunk_logits is not None:
        logits.append(np.asarray(multihost_utils.process_allgather(chunk_logits, tiled=True)))
      if keep_features:
        kept.append(np.asarray(multihost_utils.process_allgather(feats, tiled=True)))
      if (i + 1) % log_every == 0 or i + 1 == num_chunks:
        elapsed = time.perf_counter() - start_time
        logging.info("Eval %s %d-NFE: %d/%d samples, %.1f s (%.1f samples/s).", self.name,
                     num_steps, acc.count, self.num_samples, elapsed, acc.count / elapsed)
    all_logits = np.concatenate(logits)[:self.num_samples] if logits else None
    features = np.concatenate(kept)[:self.num_samples] if kept else None
    return acc, all_logits, features

  def __call__(self, state, step: int) -> Dict[str, float]:
    del step  # Noise depends on eval.seed only: every evaluation scores the same draws.
    params = self._params(state)
    f = self.features
    scalars = {}
    sweep = tuple(float(s) for s in self.config.eval.cfg_scales)
    intervals = tuple(tuple(float(v) for v in i) for i in self.config.eval.guidance_intervals)
    settings = [(s, i) for s in (sweep or (None,)) for i in (intervals or (None,))]
    for k in self.num_steps:
      best = None
      for scale, interval in settings:
        acc, logits, features = self.statistics(params, k, scale, interval)
        if features is not None:
          fd = frechet_distance_from_samples(features, f.ref_mu, f.ref_sigma)
        else:
          fd = fid.frechet_distance(acc.mean, acc.cov, f.ref_mu, f.ref_sigma)
        suffix = ("" if scale is None else f"_cfg{scale:g}") + (
            "" if interval is None else f"_t{interval[0]:g}-{interval[1]:g}")
        scalars[f"{f.scalar_prefixes['fd']}_{k}nfe{suffix}"] = fd
        if logits is not None:
          splits = IS_SPLITS if len(logits) >= 2 * IS_SPLITS else 1
          scalars[f"{f.scalar_prefixes['is']}_{k}nfe{suffix}"] = fid.inception_score(logits, splits)[0]
        if suffix and (best is None or fd < best[0]):
          best = (fd, scale, interval)
      if best is not None:  # The sweep's best, under the name a single setting would have.
        fd, scale, interval = best
        scalars[f"{f.scalar_prefixes['fd']}_{k}nfe"] = fd
        if scale is not None:
          scalars[f"best_cfg_{k}nfe"] = scale
        if interval is not None:
          scalars[f"best_t_min_{k}nfe"], scalars[f"best_t_max_{k}nfe"] = interval
    return scalars


def build_evaluators(config, model, mesh, sample_fn) -> List[Callable]:
  """The evaluators config.eval asks for; checks the config before loading or compiling anything.

  model is unused by the sample-quality evaluator (sample_fn closes over it); it is part of the
  plug-in interface for evaluators that need the network itself.
  """
  del model
  validate_config(config)
  decode = make_decoder(config)
  if config.eval.features == "pixels":
    features = pixel_feature_set(config)
  else:
    features = inception_feature_set(config, mesh)
  return [SampleQualityEvaluator(config, mesh, sample_fn, features, decode)]
