"""Converters from foreign checkpoint formats into this project's workdir layout (one module each)."""
