"""Converters from the Drifting Models release's checkpoint format (github.com/lambertae/drifting)."""
