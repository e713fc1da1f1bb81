"""Load diffusers AutoencoderKL weights from a LOCAL path into the Flax port (`vae.py`).

Accepted paths: a diffusers model folder (config.json + diffusion_pytorch_model.safetensors or .bin,
as in stabilityai/sd-vae-ft-mse), or a single .safetensors / .bin / .pt file (then the SD layout
unless a config is passed). Nothing is downloaded here; `download_vae` is a convenience for users
with internet access and is never called by the pipeline or the tests.

Mapping: diffusers key "a.b.0.c.weight" -> Flax path (a, b_0, c, kernel|scale). Conv weights
[O, I, kH, kW] -> [kH, kW, I, O]; Linear [O, I] -> [I, O]; norm weight -> scale. Pre-0.14 attention
names (query/key/value/proj_attn, possibly stored as 1x1 convs) are accepted. Every Flax parameter
must be filled and every checkpoint tensor used, else a ValueError names the offending keys.
"""
import json
import os
from typing import Dict, Mapping, Optional, Tuple

import flax.traverse_util
import jax
import numpy as np

from mf_jax.checksum import file_sha256
from mf_jax.models import vae

WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
_OLD_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out_0"}


def resolve_weights(path: str) -> Tuple[str, Optional[str]]:
  """(weights file, config.json or None) for a model folder or a weights file."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"VAE weights path {path!r} does not exist. Pass a local diffusers "
                            "AutoencoderKL folder (config.json + diffusion_pytorch_model.safetensors) "
                            "or a .safetensors/.bin file.")
  if os.path.isdir(path):
    for name in WEIGHT_NAMES:
      if os.path.isfile(os.path.join(path, name)):
        cfg = os.path.join(path, "config.json")
        return os.path.join(path, name), cfg if os.path.isfile(cfg) else None
    raise FileNotFoundError(f"VAE folder {path!r} holds none of {WEIGHT_NAMES}.")
  return path, None


def read_state_dict(weights_file: str) -> Dict[str, np.ndarray]:
  """Tensors of a .safetensors file (numpy only) or a torch .bin/.pt file (needs torch) as float32."""
  if weights_file.endswith(".safetensors"):
    from safetensors import safe_open  # pylint: disable=g-import-not-at-top
    out = {}
    try:
      with safe_open(weights_file, framework="numpy") as f:
        for k in f.keys():
          out[k] = np.asarray(f.get_tensor(k), np.float32)
      return out
    except (TypeError, ValueError):
      pass  # bfloat16 tensors have no numpy dtype: go through torch below.
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"Reading {weights_file!r} needs PyTorch (a torch pickle or bfloat16 "
                      "safetensors); install torch or convert the file to float32 safetensors.") from e
  if weights_file.endswith(".safetensors"):
    from safetensors.torch import load_file  # pylint: disable=g-import-not-at-top
    sd = load_file(weights_file)
  else:
    sd = torch.load(weights_file, map_location="cpu", weights_only=True)
    sd = sd.get("state_dict", sd)
  return {k: v.detach().float().cpu().numpy() for k, v in sd.items()}


def flax_path(key: str) -> Tuple[str, ...]:
  """'decoder.up_blocks.0.resnets.1.norm1.weight' -> ('decoder', 'up_blocks_0', 'resnets_1', 'norm1',
  'weight'): list indices fold into the preceding name, as the Flax module names do."""
  out = []
  for part in key.split("."):
    if part.isdigit() and out:
      out[-1] = f"{out[-1]}_{part}"
    else:
      out.append(_OLD_ATTENTION_NAMES.get(part, part))
  return tuple(out)


def _to_flax(value: np.ndarray, target_shape: Tuple[int, ...]) -> np.ndarray:
  if value.ndim == 4 and len(target_shape) == 2:  # attention projection stored as a 1x1 conv
    value = value.reshape(value.shape[:2])
  if value.ndim == 4:
    return np.transpose(value, (2, 3, 1, 0))
  if value.ndim == 2:
    return value.T
  return value


def convert_state_dict(state_dict: Mapping[str, np.ndarray], config: vae.VAEConfig):
  """diffusers AutoencoderKL state dict (numpy arrays) -> Flax params of `vae.AutoencoderKL(config)`.

  Raises ValueError naming every missing, unused or mis-shaped key.
  """
  expected = flax.traverse_util.flatten_dict(vae.param_shapes(config))
  filled, unused, bad_shape = {}, [], []
  for key, value in state_dict.items():
    path = flax_path(key)
    leaf = {"weight": None, "bias": "bias"}.get(path[-1], "?")
    if leaf is None:
      leaf = "scale" if np.ndim(value) == 1 else "kernel"
    target = path[:-1] + (leaf,)
    if target not in expected:
      unused.append(key)
      continue
    arr = _to_flax(np.asarray(value, np.float32), expected[target].shape)
    if arr.shape != expected[target].shape:
      bad_shape.append(f"{key}: checkpoint {tuple(np.shape(value))} -> {arr.shape}, "
                       f"model expects {expected[target].shape}")
      continue
    filled[target] = arr
  missing = ["/".join(p) for p in expected if p not in filled]
  if unused or missing or bad_shape:
    def show(names):
      return ", ".join(names[:12]) + (f" ... (+{len(names) - 12} more)" if len(names) > 12 else "")
    raise ValueError(
        f"VAE state dict does not match the layout {config}:\n"
        f"  {len(missing)} model parameters missing from the checkpoint: {show(missing)}\n"
        f"  {len(unused)} checkpoint tensors unused: {show(unused)}\n"
        f"  {len(bad_shape)} shape mismatches: {show(bad_shape)}\n"
        "Check that the file is a diffusers AutoencoderKL (not an original LDM/CompVis checkpoint) "
        "and that the layout (config.json) matches it.")
  return flax.traverse_util.unflatten_dict({k: jax.numpy.asarray(v) for k, v in filled.items()})


def load_vae(path: str, *, expected_sha256: Optional[str] = None,
             config: Optional[vae.VAEConfig] = None):
  """(config, params, sha256 of the weights file) from a local path; see module docstring."""
  weights_file, config_file = resolve_weights(path)
  digest = file_sha256(weights_file)
  if expected_sha256 and digest != expected_sha256.lower():
    raise ValueError(f"VAE weights {weights_file!r} have sha256 {digest}, expected "
                     f"{expected_sha256}: wrong or corrupted file.")
  if config is None:
    if config_file:
      with open(config_file) as f:
        config = vae.config_from_diffusers(json.load(f))
    else:
      config = vae.LAYOUTS["sd"]
  return config, convert_state_dict(read_state_dict(weights_file), config), digest


def download_vae(repo_id: str = "stabilityai/sd-vae-ft-mse", local_dir: str = "sd-vae-ft-mse") -> str:
  """For users WITH internet: fetch a diffusers VAE folder once, then pass local_dir as --vae."""
  from huggingface_hub import snapshot_download  # pylint: disable=g-import-not-at-top
  return snapshot_download(repo_id, local_dir=local_dir,
                           allow_patterns=["config.json", "diffusion_pytorch_model.safetensors"])
