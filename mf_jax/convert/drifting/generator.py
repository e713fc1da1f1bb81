"""Alias of mf_jax/convert/formats/drifting_generator.py (the release's generator table)."""
from mf_jax.convert.formats.drifting_generator import (  # pylint: disable=unused-import
    CONFIG_FIELDS, METADATA_FILE, NAME_TEMPLATES, PARAMS_FILE, artifact_dir, check_model_config,
    convert_params, map_name, read_release, table)
