"""Evaluator plug-ins: --mode=eval end to end on the tiny config (pixels, random-weight Inception),
determinism, the numbers against an independent numpy/scipy computation, and config errors."""
import glob
import json
import os
import types
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from configs import tiny
from eval import evaluators, fid, inception
from input_pipeline import digits
from mf_jax import generate, train
from mf_jax import sharding as sharding_lib
from test_fid import inception_score_by_entropies


def numpy_frechet(a, b):
  """FD of two [N, D] feature sets: numpy moments and scipy's sqrtm (pytorch-fid's formula)."""
  mu1, mu2 = a.mean(0), b.mean(0)
  s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  with warnings.catch_warnings():
    # Border pixels of the digits are constant, so s1 s2 is singular; sqrtm warns, but the error
    # it adds is far below the tolerances used here.
    warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
    covmean = np.real(scipy.linalg.sqrtm(s1 @ s2))
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def heldout_pixels():
  return fid.pixel_features(generate.to_uint8(digits.load("eval")["x"], tiny.get_config()))


def eval_rows(workdir, key):
  return [r for r in map(json.loads, open(os.path.join(workdir, "metrics.jsonl"))) if key in r]


def event_tags(workdir):
  import tensorflow as tf  # Already loaded by CLU's writer.
  tags = set()
  for path in glob.glob(os.path.join(workdir, "events.out.tfevents*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.update(v.tag for v in event.summary.value)
  return tags


def perturbed(tree, seed):
  """Parameters plus noise: the zero-initialised output layer would make every sample pure noise.

  numpy noise, placed with each leaf's sharding: nothing to compile."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda x: jax.device_put(np.asarray(x) + 0.05 * rng.standard_normal(x.shape, np.float32),
                               x.sharding), tree)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A tiny run's workdir with a step-2 checkpoint whose raw and EMA parameters differ.

  Written by the trainer's own set-up and checkpointer rather than by training steps: compiling
  the MeanFlow step costs more than this file's time budget on the shared CPU (test_train covers
  training).
  """
  path = str(tmp_path_factory.mktemp("eval_run"))
  config = tiny.get_config()
  state, _, mesh, model, _, ckpt = train.setup_state(config, path)
  state = state.replace(step=jnp.full_like(state.step, 2), params=perturbed(state.params, 1),
                        ema_params=(perturbed(state.params, 2),))
  ckpt.save(2, state)
  ckpt.wait()
  ckpt.close()
  return types.SimpleNamespace(workdir=path, state=state, mesh=mesh, model=model)


def test_eval_mode_pixels_deterministic_and_matches_numpy(run):
  config = tiny.get_config()
  config.eval.update(features="pixels", num_samples=24, batch_size=16)  # 24: a masked last chunk.
  train.evaluate_checkpoint(config, run.workdir)
  row, = eval_rows(run.workdir, "fd_pixels_1nfe")
  assert row["step"] == 2 and row["fd_pixels_1nfe"] != row["fd_pixels_2nfe"]
  assert {"fd_pixels_1nfe", "fd_pixels_2nfe"} <= event_tags(run.workdir)

  # A second run, in memory from the state that was saved: the same numbers.
  sample_fn = generate.make_sampler(config, run.model, run.mesh)
  evaluator, = evaluators.build_evaluators(config, run.model, run.mesh, sample_fn)
  again = evaluator(run.state, 2)
  assert again == {k: v for k, v in row.items() if k != "step"}

  # Independent route: generate.draw's samples from the EMA parameters (same seed and chunking),
  # numpy moments, scipy's sqrtm.
  config.sample.batch_size = config.eval.batch_size
  ref = heldout_pixels()
  for k in (1, 2):
    x, _ = generate.draw(config, sample_fn, run.state.ema_params[0], run.mesh, 24, k,
                         config.eval.seed)
    truth = numpy_frechet(fid.pixel_features(generate.to_uint8(x, config)), ref)
    assert row[f"fd_pixels_{k}nfe"] == pytest.approx(truth, rel=1e-4)


def test_eval_mode_random_inception_deterministic(run, tmp_path):
  config = tiny.get_config()
  config.eval.update(features="inception", inception_path="random", num_samples=8, batch_size=8,
                     num_steps=(1,))
  # Reference statistics: the very samples the evaluator will draw (generate.draw, same seed),
  # through eval.fid's host-side tools and the evaluator's random-weight network, so the FID must
  # come out ~0. (On the mesh, so that the evaluator reuses this Inception compilation.)
  config.sample.batch_size = config.eval.batch_size
  sample_fn = generate.make_sampler(config, run.model, run.mesh)
  x, _ = generate.draw(config, sample_fn, run.state.ema_params[0], run.mesh, 8, 1, config.eval.seed)
  images = np.repeat(generate.to_uint8(x, config), 3, axis=-1)  # Grayscale -> RGB.
  params = jax.device_put(evaluators._random_inception_params(),  # pylint: disable=protected-access
                          sharding_lib.replicated(run.mesh))
  features = inception.InceptionFeatures(inception.make_apply_fn("tf1"), params, 8)
  acc, _ = fid.feature_statistics(
      [jax.device_put(images, sharding_lib.batch_sharding(run.mesh))], features)
  config.eval.ref_stats = str(tmp_path / "ref.npz")
  fid.save_stats(config.eval.ref_stats, acc.mean, acc.cov, acc.count,
                 feature="inception_pool_random")

  train.evaluate_checkpoint(config, run.workdir)
  row, = eval_rows(run.workdir, "fid_1nfe")
  assert row["step"] == 2 and row["fid_1nfe"] < 1e-6 * np.trace(acc.cov)
  # The Inception Score from the same network's logits of the same samples, by the entropy form
  # (float32 network, so the README's 1e-4 for two evaluations of a deep float32 network).
  _, logits = features.pool_and_logits(images)
  assert row["is_1nfe"] == pytest.approx(inception_score_by_entropies(logits), rel=1e-4)
  assert {"fid_1nfe", "is_1nfe"} <= event_tags(run.workdir)
  evaluator, = evaluators.build_evaluators(config, run.model, run.mesh, sample_fn)
  assert evaluator(run.state, 2) == {k: v for k, v in row.items() if k != "step"}


class HeldOutSampler:
  """A fake sample_fn that returns the held-out digits in order, padding past the end with 1s."""

  def __init__(self, mesh):
    self.x, self.mesh, self.served = digits.load("eval")["x"], mesh, 0

  def __call__(self, params, noise, labels, num_steps, cfg_scale):
    n = noise.shape[0]
    chunk = self.x[self.served:self.served + n]
    self.served += n
    chunk = np.concatenate([chunk, np.ones((n - len(chunk),) + chunk.shape[1:], np.float32)])
    return jax.device_put(jnp.asarray(chunk), sharding_lib.batch_sharding(self.mesh))


@pytest.mark.parametrize("num_samples", [297, 150])
def test_pixel_distance_of_heldout_digits_themselves(num_samples):
  config = tiny.get_config()
  config.eval.update(features="pixels", num_samples=num_samples, batch_size=16, num_steps=(1,))
  mesh = sharding_lib.make_mesh(1)
  evaluator, = evaluators.build_evaluators(config, None, mesh, HeldOutSampler(mesh))
  state = types.SimpleNamespace(ema_params=(None,), params=None)
  fd = evaluator(state, 0)["fd_pixels_1nfe"]
  ref = heldout_pixels()
  if num_samples == len(ref):  # The reference set itself: zero up to float32 chunk moments.
    assert fd < 1e-5 * np.trace(np.cov(ref, rowvar=False))
  else:  # The first 150 (a masked last chunk) against all 297.
    assert fd == pytest.approx(numpy_frechet(ref[:num_samples], ref), rel=1e-4)


@pytest.mark.parametrize("n", [5, 40])
def test_frechet_from_samples_matches_moments(n):
  # n < D and n = D - 24 (rank-deficient S1); the reference covariance is full rank.
  rng = np.random.default_rng(n)
  x = rng.normal(size=(n, 64)) @ rng.normal(size=(64, 64))
  ref = rng.normal(size=(500, 64)) @ rng.normal(size=(64, 64)) + 0.3
  mu, sigma = ref.mean(0), np.cov(ref, rowvar=False)
  assert evaluators.frechet_distance_from_samples(x, mu, sigma) == pytest.approx(
      fid.frechet_distance(x.mean(0), np.cov(x, rowvar=False), mu, sigma), rel=1e-9)


def test_quantize_matches_generate_to_uint8():
  x = np.concatenate([np.linspace(-1.2, 1.2, 1001), (np.arange(256) + 0.5) / 127.5 - 1.0])
  x = x.astype(np.float32).reshape(-1, 1, 1, 1)
  np.testing.assert_array_equal(np.asarray(evaluators.quantize_uint8(jnp.asarray(x))),
                                generate.to_uint8(x, tiny.get_config()))


@pytest.mark.parametrize("updates,error,match", [
    (dict(features="clip"), ValueError, r"eval.features='clip': allowed values"),
    (dict(batch_size=12), ValueError, r"eval.batch_size=12 must be a positive multiple of the "
                                      r"device count \(8\)"),
    (dict(num_samples=1), ValueError, r"eval.num_samples=1: must be an integer >= 2"),
    (dict(num_steps=(1, 0)), ValueError, r"eval.num_steps=\(1, 0\)"),
    (dict(features="inception", inception_path="random"), ValueError,
     r"eval.features='inception' needs eval.ref_stats"),
    (dict(ref_stats="/no/such/stats.npz"), FileNotFoundError, r"eval.ref_stats=.*not found"),
    (dict(features="inception", ref_stats=__file__, inception_path="/no/w.pth"),
     FileNotFoundError, r"eval.inception_path='/no/w.pth': FID Inception weights not found"),
    (dict(ema_index=3), ValueError, r"eval.use_ema=True with eval.ema_index=3"),
])
def test_config_errors_name_the_field(monkeypatch, updates, error, match):
  monkeypatch.setattr(evaluators, "SampleQualityEvaluator", None)  # Never reached.
  config = tiny.get_config()
  config.eval.update(updates)
  with pytest.raises(error, match=match):
    evaluators.build_evaluators(config, None, sharding_lib.make_mesh(1), None)


def test_ref_stats_dimension_and_latent_errors(tmp_path):
  path = str(tmp_path / "five.npz")
  fid.save_stats(path, np.zeros(5), np.eye(5))
  config = tiny.get_config()
  config.eval.ref_stats = path
  with pytest.raises(ValueError, match=r"holds 5-d statistics but eval.features='pixels' gives 64"):
    evaluators.build_evaluators(config, None, sharding_lib.make_mesh(1), None)
  config.data.name = "imagenet_latents"
  with pytest.raises(ValueError, match=r"data.vae_path"):
    evaluators.build_evaluators(config, None, sharding_lib.make_mesh(1), None)


def test_cfg_sweep_reports_each_scale_and_the_best():
  config = tiny.get_config()
  config.eval.update(features="pixels", num_samples=150, batch_size=16, num_steps=(1,),
                     cfg_scales=(1.0, 2.0, 3.0))
  mesh = sharding_lib.make_mesh(1)

  class ScaleSampler(HeldOutSampler):  # Held-out digits at scale 2, all-ones images otherwise.
    def __call__(self, params, noise, labels, num_steps, cfg_scale):
      if cfg_scale == 2.0:
        return super().__call__(params, noise, labels, num_steps, cfg_scale)
      return jax.device_put(jnp.ones(noise.shape, jnp.float32), sharding_lib.batch_sharding(mesh))

  evaluator, = evaluators.build_evaluators(config, None, mesh, ScaleSampler(mesh))
  scalars = evaluator(types.SimpleNamespace(ema_params=(None,), params=None), 0)
  assert scalars["best_cfg_1nfe"] == 2.0
  assert scalars["fd_pixels_1nfe"] == scalars["fd_pixels_1nfe_cfg2"] < scalars["fd_pixels_1nfe_cfg1"]
  assert scalars["fd_pixels_1nfe_cfg1"] == scalars["fd_pixels_1nfe_cfg3"]
