"""Alias of the release's feature-encoder tables: mf_jax/convert/formats/drifting_mae.py (MAE)
and mf_jax/convert/formats/convnext.py (ConvNeXt-V2, release Flax tree and Hugging Face)."""
from mf_jax.convert.formats.convnext import (  # pylint: disable=unused-import
    CONVNEXT_RULES, HF_CONVNEXT_RULES, convert_convnext, convert_convnext_hf)
from mf_jax.convert.formats.drifting_mae import MAE_RULES, convert_mae  # pylint: disable=unused-import
