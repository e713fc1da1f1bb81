"""Converters from foreign checkpoint formats: one engine (engine.py, readers.py, workdir.py), one
rule table per format (formats/), one CLI (`python -m mf_jax.convert SOURCE ...`, __main__.py)."""
