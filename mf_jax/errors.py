"""The error a user's mistake raises: main.py prints it in one line and exits with status 2."""


class ConfigError(ValueError):
  """A bad config field or workdir, named with its value and the fix."""
