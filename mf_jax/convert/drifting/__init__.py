"""Aliases of the Drifting release's formats (mf_jax/convert/formats/drifting_*.py, convnext.py)."""
