"""The project's error for bad input, importable from every layer without cycles."""


class ConfigError(ValueError):
  """A bad config field or workdir; main.py prints it in one line and exits with status 2."""
