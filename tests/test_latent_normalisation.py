"""Per-channel latent normalisation (data.latent_mean / latent_std, iMF): the training input, its
inverse before the VAE decoder, and the config check of the statistics' length."""
import jax
import numpy as np
import pytest

from configs import imagenet_b2, imagenet_imf
from eval import evaluators
from input_pipeline import latents
from input_pipeline.config import check_latent_statistics
from mf_jax import config_checks, generate
from mf_jax.convert.formats import sd_vae as vae_convert
from mf_jax.errors import ConfigError
from mf_jax.models import vae

EPS32 = np.finfo(np.float32).eps
MEAN = np.array([0.86488, -0.27787343, 0.21616915, 0.3738409])
STD = np.array([4.85503674, 5.31922414, 3.93725398, 3.9870003])


def posterior(seed, shape=(6, 3, 3, 4)):
  rng = np.random.RandomState(seed)
  return {"x": rng.normal(1.0, 5.0, shape).astype(np.float32),
          "x_std": rng.uniform(0.01, 0.5, shape).astype(np.float32),
          "x_flip": rng.normal(-1.0, 5.0, shape).astype(np.float32),
          "x_flip_std": rng.uniform(0.01, 0.5, shape).astype(np.float32)}


def test_input_is_the_posterior_sample_normalised_per_channel():
  batch, key = posterior(0), jax.random.key(7)
  # By hand, without flips: the noise of draw_latents' second key, z = mean + std * noise.
  noise = np.asarray(jax.random.normal(jax.random.split(key)[1], batch["x"].shape), np.float64)
  z = batch["x"] + batch["x_std"].astype(np.float64) * noise
  want = (z - MEAN) / STD
  got = np.asarray(latents.draw_latents(batch, key, 0.18215, False, tuple(MEAN), tuple(STD)))
  # float32: z rounded in two operations, then (z - mean) / std in two more.
  tol = float(np.max(4 * EPS32 * (np.abs(z) + np.abs(MEAN)) / STD))
  np.testing.assert_allclose(got, want, rtol=0, atol=tol)
  # With flips the same view and noise as the scaled input: only the normalisation differs.
  z = np.asarray(latents.draw_latents(batch, key, 1.0, True), np.float64)
  got = np.asarray(latents.draw_latents(batch, key, 1.0, True, tuple(MEAN), tuple(STD)))
  np.testing.assert_allclose(got, (z - MEAN) / STD, rtol=0,
                             atol=float(np.max(2 * EPS32 * (np.abs(z) + np.abs(MEAN)) / STD)))
  # The channels really differ (a channel-blind or swapped statistic would not match above).
  assert np.ptp(got.mean(axis=(0, 1, 2))) > 0.1


@pytest.fixture
def identity_vae(monkeypatch):
  """load_decoder's VAE replaced by the identity, so the decoder shows the latents it feeds it."""
  monkeypatch.setattr(vae_convert, "load_vae", lambda path: (None, None, None))
  monkeypatch.setattr(vae, "decode_latents", lambda cfg, params, z: z)
  generate.load_decoder.cache_clear()
  yield
  generate.load_decoder.cache_clear()


def test_decoding_inverts_the_normalisation(identity_vae):
  batch, key = posterior(1), jax.random.key(3)
  z = np.asarray(latents.draw_latents(batch, key, 1.0, True), np.float64)  # the posterior sample
  config = imagenet_b2.get_config()
  config.data.update(vae_path="/vae/identity", latent_mean=tuple(MEAN), latent_std=tuple(STD))
  x = latents.draw_latents(batch, key, config.data.latent_scale, True, config.data.latent_mean,
                           config.data.latent_std)
  tol = float(np.max(4 * EPS32 * (np.abs(z) + np.abs(MEAN))))  # two roundings each way
  np.testing.assert_allclose(generate.decode(np.asarray(x), config), z, rtol=0, atol=tol)
  np.testing.assert_allclose(np.asarray(evaluators.make_decoder(config)(x)), z, rtol=0, atol=tol)
  # () keeps the scale: the VAE gets x / latent_scale.
  config.data.update(latent_mean=(), latent_std=())
  x = latents.draw_latents(batch, key, config.data.latent_scale, True)
  np.testing.assert_allclose(generate.decode(np.asarray(x), config), z, rtol=4 * EPS32, atol=0)


def test_statistics_of_the_wrong_length_are_refused_naming_the_field():
  config = imagenet_b2.get_config()
  assert check_latent_statistics in config_checks.CROSS_CHECKS
  check_latent_statistics(config)  # () and ()
  config.data.update(latent_mean=tuple(MEAN), latent_std=tuple(STD))
  check_latent_statistics(config)
  config.data.latent_std = tuple(STD[:3])
  with pytest.raises(ConfigError, match=r"data\.latent_std has 3 values, but data\.channels=4"):
    check_latent_statistics(config)
  config.data.update(latent_mean=(), latent_std=tuple(STD))
  with pytest.raises(ConfigError, match=r"data\.latent_mean is empty but data\.latent_std is set"):
    check_latent_statistics(config)
  config.data.update(latent_mean=tuple(MEAN), latent_std=tuple(STD), name="imagenet_pixels")
  with pytest.raises(ConfigError, match=r"data\.latent_mean/latent_std are set.*imagenet_pixels"):
    check_latent_statistics(config)
  config.data.update(name="imagenet_latents", latent_std=(1.0, 0.0, 1.0, 1.0))
  with pytest.raises(ConfigError, match=r"data\.latent_std=.*positive|data\.latent_std=.*> 0"):
    config_checks.check_fields(config)


def test_imf_config_uses_the_official_statistics():
  config = imagenet_imf.get_config("B/2")
  np.testing.assert_array_equal(config.data.latent_mean, MEAN)
  np.testing.assert_array_equal(config.data.latent_std, STD)
  check_latent_statistics(config)
