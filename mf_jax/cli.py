"""One error style for every command-line tool: `tool: error: <field or file>: problem. Fix: ...`.

Exit status 2 for a user's mistake (bad flag, missing or malformed input file), 3 for a damaged
workdir, 0 for --help; a traceback only for a bug. absl tools run through `run_absl`, argparse
tools wrap their main in `user_errors`.
"""
import contextlib
import sys

HELP_FLAGS = ("--help", "-h", "-?", "--helpshort", "--helpfull", "--helpxml")
# What a user's input can raise before any real work (programming errors are other types).
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
               PermissionError)


def fail(tool: str, message, status: int = 2):
  """Prints `tool: error: message` to stderr and exits with `status`."""
  sys.stderr.write(f"{tool}: error: {str(message).strip()}\n")
  sys.exit(status)


def asks_for_help(argv) -> bool:
  return any(a in HELP_FLAGS for a in argv[1:])


@contextlib.contextmanager
def user_errors(tool: str):
  """Turns USER_ERRORS and SystemExit("message") raised inside into one error line, exit 2."""
  try:
    yield
  except SystemExit as e:
    if isinstance(e.code, str):
      fail(tool, e.code)
    raise
  except USER_ERRORS as e:
    fail(tool, e)


def run_absl(main, tool: str = None):
  """absl.app.run(main), with --help exiting 0 (absl exits 1) and user errors as one line."""
  from absl import app  # pylint: disable=g-import-not-at-top
  tool = tool or sys.argv[0]
  try:
    with user_errors(tool):
      app.run(main)
  except SystemExit as e:
    if e.code == 1 and asks_for_help(sys.argv):
      sys.exit(0)
    raise
