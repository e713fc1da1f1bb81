"""Alias of the diffusers SD-VAE table (mf_jax/convert/formats/sd_vae.py): load_vae and friends
keep their names here for the callers (generate.py, prepare_imagenet.py)."""
from mf_jax.checksum import file_sha256  # pylint: disable=unused-import
from mf_jax.convert.formats.sd_vae import (  # pylint: disable=unused-import
    WEIGHT_NAMES, convert_state_dict, download_vae, flax_path, load_vae, read_state_dict,
    resolve_weights)
