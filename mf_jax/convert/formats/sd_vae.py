"""diffusers AutoencoderKL weights (e.g. stabilityai/sd-vae-ft-mse) -> the Flax port mf_jax/models/vae.py.

Accepted paths: a diffusers model folder (config.json + diffusion_pytorch_model.safetensors or .bin),
or a single .safetensors / .bin / .pt file (then the SD layout unless a config is passed). Nothing
is downloaded here; `download_vae` is a convenience for users with internet access and is never
called by the pipeline or the tests.

Names: diffusers key "a.b.0.c.weight" -> Flax path "a/b_0/c/kernel|scale" (list indices fold into
the preceding name, as the Flax module names do; a weight is the module's kernel or scale). Conv
weights [O, I, kH, kW] -> [kH, kW, I, O]; Linear [O, I] -> [I, O]; pre-0.14 attention names
(query/key/value/proj_attn, possibly stored as 1x1 convs) are accepted.
"""
import json
import os
from typing import Dict, Mapping, Optional, Tuple

import jax
import numpy as np

from mf_jax.checksum import file_sha256
from mf_jax.convert import engine, readers
from mf_jax.models import vae

WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
_OLD_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out_0"}
FIX = ("check that the file is a diffusers AutoencoderKL (not an original LDM/CompVis checkpoint) "
       "and that the layout (config.json) matches it")


def flax_path(key: str) -> Tuple[str, ...]:
  """'decoder.up_blocks.0.resnets.1.norm1.weight' -> ('decoder', 'up_blocks_0', 'resnets_1',
  'norm1', 'weight')."""
  out = []
  for part in key.split("."):
    if part.isdigit() and out:
      out[-1] = f"{out[-1]}_{part}"
    else:
      out.append(_OLD_ATTENTION_NAMES.get(part, part))
  return tuple(out)


def _target(m) -> str:
  *modules, leaf = flax_path(m[0])
  path = "/".join(modules)
  return f"{path}/kernel|{path}/scale" if leaf == "weight" else f"{path}/{leaf}"


NAME_RULES = engine.rules((r".*\.(weight|bias)", _target, "torch_1x1_dense"))


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
  """Tensors of a .safetensors file (numpy only) or a torch .bin/.pt file (needs torch), float32."""
  if weights_file.endswith(".safetensors"):
    return readers.read_safetensors(weights_file, np.float32)
  sd = readers.read_torch(weights_file)
  if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
    sd = sd["state_dict"]
  return readers.torch_to_numpy(sd, np.float32)


def convert_state_dict(state_dict: Mapping[str, np.ndarray], config: vae.VAEConfig):
  """diffusers AutoencoderKL state dict (numpy arrays) -> Flax params of `vae.AutoencoderKL(config)`.

  Raises engine.ConversionError naming every unmapped, misshaped or missing key.
  """
  target = engine.flat(vae.param_shapes(config))
  source = {k: np.asarray(v, np.float32) for k, v in state_dict.items()}
  problems = []
  filled = engine.convert(source, NAME_RULES, target, problems)
  engine.report(problems, f"the VAE state dict does not fit the layout {config}", FIX)
  return engine.nest({k: jax.numpy.asarray(v) for k, v in filled.items()})


def load_vae(path: str, *, expected_sha256: Optional[str] = None,
             config: Optional[vae.VAEConfig] = None):
  """(config, params, sha256 of the weights file) from a local path; see module docstring."""
  weights_file, config_file = resolve_weights(path)
  digest = file_sha256(weights_file)
  if expected_sha256 and digest != expected_sha256.lower():
    raise engine.SourceError(weights_file, f"has sha256 {digest}, expected {expected_sha256}",
                             "wrong or corrupted file: copy the VAE weights again")
  if config is None:
    if config_file:
      with open(config_file) as f:
        config = vae.config_from_diffusers(json.load(f))
    else:
      config = vae.LAYOUTS["sd"]
  return config, convert_state_dict(read_state_dict(weights_file), config), digest


def convert_to_file(src: str, out: str) -> Tuple[vae.VAEConfig, str]:
  """Checks a diffusers VAE (folder or file) against its layout and writes its state dict as a
  float32 .safetensors (same keys) that loads without torch; returns (config, out)."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  weights_file, _ = resolve_weights(src)
  config, _, _ = load_vae(src)
  state = {k: np.ascontiguousarray(v) for k, v in read_state_dict(weights_file).items()}
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  save_file(state, out)
  return config, out


def download_vae(repo_id: str = "stabilityai/sd-vae-ft-mse", local_dir: str = "sd-vae-ft-mse") -> str:
  """For users WITH internet: fetch a diffusers VAE folder once, then pass local_dir as --vae."""
  from huggingface_hub import snapshot_download  # pylint: disable=g-import-not-at-top
  return snapshot_download(repo_id, local_dir=local_dir,
                           allow_patterns=["config.json", "diffusion_pytorch_model.safetensors"])
