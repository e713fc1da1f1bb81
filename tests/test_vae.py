"""Flax SD-VAE port vs diffusers' PyTorch AutoencoderKL on random weights, and the converter."""
import copy
import os

import jax
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from mf_jax.models import vae
from mf_jax.convert.formats import sd_vae as vae_convert
import numerics


def torch_vae(cfg: vae.VAEConfig, seed: int = 0) -> AutoencoderKL:
  """diffusers model of the same layout, default random init; the 1-D parameters (norm scales and
  biases, start at 1 and 0) perturbed so that swapping them in the converter would show."""
  torch.manual_seed(seed)
  n = len(cfg.block_out_channels)
  model = AutoencoderKL(block_out_channels=cfg.block_out_channels,
                        layers_per_block=cfg.layers_per_block,
                        latent_channels=cfg.latent_channels, norm_num_groups=cfg.norm_num_groups,
                        down_block_types=("DownEncoderBlock2D",) * n,
                        up_block_types=("UpDecoderBlock2D",) * n).eval()
  with torch.no_grad():
    for p in model.parameters():
      if p.ndim == 1:
        p.add_(0.05 * torch.randn_like(p))
  return model


def state_dict_np(model):
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def assert_parity(cfg, model, params, size):
  """Encoder moments and decoder output of the Flax port against diffusers, on the same inputs.

  Truth is diffusers in float64; our float32 port must be about as accurate as diffusers' own
  float32 run (tests/README.md): a fixed tolerance would depend on the processor and, for the deep
  SD layout, sits within a few times of the observed float32 error.
  """
  x = np.random.RandomState(1).uniform(-1, 1, (2 if size <= 32 else 1, 3, size, size))
  x = x.astype(np.float32)
  nhwc = lambda t: t.numpy().transpose(0, 2, 3, 1)
  model64 = copy.deepcopy(model).double()
  with torch.no_grad():
    post32 = model.encode(torch.from_numpy(x)).latent_dist
    post64 = model64.encode(torch.from_numpy(x).double()).latent_dist
    z = post32.mean  # One float32 latent decoded by all three, so decoders are compared alone.
    image32, image64 = model.decode(z).sample, model64.decode(z.double()).sample
  mean, std = jax.jit(lambda p, x: vae.encode_moments(cfg, p, x))(params, x.transpose(0, 2, 3, 1))
  assert mean.shape == (x.shape[0], size // cfg.downsample_factor, size // cfg.downsample_factor,
                        cfg.latent_channels)
  out = jax.jit(lambda p, z: vae.decode_latents(cfg, p, z))(params, nhwc(z))
  for name, ours, ref32, ref64 in (("mean", mean, post32.mean, post64.mean),
                                   ("std", std, post32.std, post64.std),
                                   ("decoded", out, image32, image64)):
    assert float(torch.abs(ref64).mean()) > 1e-2, name  # Not a degenerate comparison.
    numerics.assert_as_accurate(np.asarray(ours), nhwc(ref32), nhwc(ref64), what=f"VAE {name}")


def test_tiny_layout_matches_diffusers():
  cfg = vae.LAYOUTS["tiny"]
  model = torch_vae(cfg)
  assert_parity(cfg, model, vae_convert.convert_state_dict(state_dict_np(model), cfg), 16)


def test_sd_layout_matches_diffusers_at_64px():
  cfg = vae.LAYOUTS["sd"]
  model = torch_vae(cfg, seed=1)
  sd = state_dict_np(model)
  assert sum(v.size for v in sd.values()) > 80e6  # really the ~84M-parameter SD-VAE layout
  params = vae_convert.convert_state_dict(sd, cfg)
  del sd
  assert_parity(cfg, model, params, 64)


def test_converter_names_missing_unused_and_misshaped_keys():
  cfg = vae.LAYOUTS["tiny"]
  sd = state_dict_np(torch_vae(cfg))
  good = vae_convert.convert_state_dict(sd, cfg)
  n_params = sum(np.size(v) for v in jax.tree_util.tree_leaves(good))
  assert n_params == sum(v.size for v in sd.values())  # every tensor used exactly once

  broken = dict(sd)
  del broken["decoder.mid_block.attentions.0.to_k.weight"]
  broken["encoder.extra_layer.weight"] = np.zeros(3, np.float32)
  broken["quant_conv.bias"] = np.zeros(5, np.float32)
  with pytest.raises(ValueError) as err:
    vae_convert.convert_state_dict(broken, cfg)
  msg = str(err.value)
  assert "decoder/mid_block/attentions_0/to_k/kernel" in msg
  assert "encoder.extra_layer.weight" in msg
  assert "quant_conv.bias" in msg and "(5,)" in msg

  with pytest.raises(ValueError, match="missing"):
    vae_convert.convert_state_dict(sd, vae.VAEConfig(block_out_channels=(8, 16, 16),
                                                     layers_per_block=1, norm_num_groups=4))


def test_old_attention_names_and_1x1_conv_projections_convert_identically():
  cfg = vae.LAYOUTS["tiny"]
  sd = state_dict_np(torch_vae(cfg))
  old = {}
  for k, v in sd.items():
    for new, legacy in ((".to_q.", ".query."), (".to_k.", ".key."), (".to_v.", ".value."),
                        (".to_out.0.", ".proj_attn.")):
      if new in k:
        k, v = k.replace(new, legacy), (v[:, :, None, None] if v.ndim == 2 else v)
    old[k] = v
  a = vae_convert.convert_state_dict(sd, cfg)
  b = vae_convert.convert_state_dict(old, cfg)
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def test_load_vae_from_saved_folder_checks_sha256(tmp_path):
  cfg = vae.LAYOUTS["tiny"]
  model = torch_vae(cfg)
  model.save_pretrained(tmp_path / "vae")  # config.json + diffusion_pytorch_model.safetensors
  loaded_cfg, params, digest = vae_convert.load_vae(str(tmp_path / "vae"))
  assert loaded_cfg == cfg
  assert digest == vae_convert.file_sha256(
      str(tmp_path / "vae" / "diffusion_pytorch_model.safetensors"))
  assert_parity(cfg, model, params, 8)
  torch.save(model.state_dict(), tmp_path / "vae.bin")
  _, params_bin, _ = vae_convert.load_vae(str(tmp_path / "vae.bin"), config=cfg)
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, params_bin)
  with pytest.raises(ValueError, match="sha256"):
    vae_convert.load_vae(str(tmp_path / "vae"), expected_sha256="0" * 64)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    vae_convert.load_vae(str(tmp_path / "nowhere"))
  os.makedirs(tmp_path / "empty")
  with pytest.raises(FileNotFoundError, match="holds none"):
    vae_convert.load_vae(str(tmp_path / "empty"))
