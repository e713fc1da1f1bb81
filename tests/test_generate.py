"""Turning samples into images: pixel mapping, latent decoding through a saved SD-VAE, grids, .npz."""
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from configs import imagenet_b2, tiny
from mf_jax import generate
from mf_jax.models import vae


def test_pixel_samples_to_uint8():
  config = tiny.get_config()
  x = np.array([-1.0, -0.5, 0.0, 1.0, 1.5]).reshape(1, 5, 1, 1)
  np.testing.assert_array_equal(generate.to_uint8(x, config).ravel(), [0, 64, 128, 255, 255])


def test_latents_decode_through_saved_vae(tmp_path):
  torch.manual_seed(0)
  tiny_layout = vae.LAYOUTS["tiny"]
  model = AutoencoderKL(block_out_channels=list(tiny_layout.block_out_channels),
                        down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, layers_per_block=1,
                        latent_channels=4, norm_num_groups=4).eval()
  model.save_pretrained(tmp_path / "vae")
  config = imagenet_b2.get_config()
  with pytest.raises(ValueError, match="data.vae_path is empty"):
    generate.to_uint8(np.zeros((1, 4, 4, 4), np.float32), config)
  config.data.vae_path = str(tmp_path / "vae")
  z = np.random.default_rng(0).normal(size=(3, 4, 4, 4)).astype(np.float32)
  images = generate.to_uint8(z, config)
  with torch.no_grad():  # Independent truth: diffusers decodes z / scale.
    ref = model.decode(torch.from_numpy(z / config.data.latent_scale).permute(0, 3, 1, 2)).sample
  ref = np.clip(np.round((ref.permute(0, 2, 3, 1).numpy() + 1) * 127.5), 0, 255)
  assert images.shape == (3, 8, 8, 3) and images.dtype == np.uint8
  assert np.abs(images.astype(int) - ref.astype(int)).max() <= 1


def test_grid_and_npz(tmp_path):
  imgs = np.arange(5 * 2 * 3 * 1, dtype=np.uint8).reshape(5, 2, 3, 1)
  g = generate.grid(imgs, cols=2)
  assert g.shape == (3 * 3 + 1, 2 * 4 + 1, 1)
  np.testing.assert_array_equal(g[1:3, 1:4], imgs[0])
  np.testing.assert_array_equal(g[4:6, 5:8], imgs[3])
  generate.save_npz(imgs, np.arange(5), str(tmp_path / "s" / "b.npz"))
  d = np.load(tmp_path / "s" / "b.npz")
  np.testing.assert_array_equal(d["arr_0"], imgs)
  np.testing.assert_array_equal(d["arr_1"], np.arange(5))


def test_sample_sampler_euler_integrates_the_instantaneous_velocity():
  """sample.sampler="euler" steps with u(z, t, t) (the flow-matching baseline), "meanflow" with
  u(z, r, t): each matches the loop it names (same float32 ops, jitted or not), and the two differ
  on a random network (whose u(z, r, t) depends on r)."""
  import jax
  import jax.numpy as jnp
  from mf_jax import sampling, sharding as sharding_lib, train_state as ts
  from mf_jax.objectives.meanflow import u_fn as meanflow_u_fn
  config = tiny.get_config()
  config.model.update(name="mlp", mlp_widths=(16,))
  model = ts.build_model(config)
  params = model.init(jax.random.key(0), *ts.example_inputs(config))
  mesh = sharding_lib.make_mesh(1)
  noise = jax.random.normal(jax.random.key(1), (16, 8, 8, 1))
  labels = jnp.arange(16, dtype=jnp.int32) % 10
  u_fn = meanflow_u_fn(model, params)
  out = {}
  for name, loop in (("euler", sampling.euler_steps), ("meanflow", sampling.meanflow_steps)):
    config.sample.sampler = name
    out[name] = np.asarray(generate.make_sampler(config, model, mesh)(params, noise, labels, 2))
    np.testing.assert_allclose(out[name], np.asarray(loop(u_fn, noise, labels, 2)),
                               rtol=1e-5, atol=1e-5)
  assert np.abs(out["euler"] - out["meanflow"]).max() > 1e-3
