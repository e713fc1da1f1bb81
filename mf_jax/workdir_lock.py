"""One writer per workdir: an advisory lock held by the live process that trains it.

The lock is fcntl.flock on WORKDIR/train.lock. The kernel drops it when its holder exits in any way
(SIGKILL included), so a stale lock of a dead process is never mistaken for a live one and needs no
cleaning; the file only says who held it last (pid, host, start time, command) for the message.
flock conflicts between two open() calls even inside one process, so the study runner and the
trainer it calls share a lock through `hold` (re-entrant per process), never by opening it twice.
Remote workdirs (gs://...) cannot be locked this way and are not locked (one log line).
"""
import contextlib
import fcntl
import json
import os
import socket
import sys
import threading
import time

FILE = "train.lock"

_held = {}  # Absolute lock path -> [open file, depth] for the locks this process holds.
_guard = threading.Lock()


class WorkdirBusy(RuntimeError):
  """Another live process holds the workdir's lock."""


def lock_path(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), FILE)


def _describe(path: str) -> str:
  try:
    with open(path) as f:
      info = json.load(f)
    return (f"pid {info['pid']} on {info['host']}, started {info['started']}: "
            f"{' '.join(info['argv'])[:200]}")
  except (OSError, ValueError, KeyError, TypeError):
    return "a process that left no record"


def holder(workdir: str):
  """A description of the live process holding `workdir`'s lock (this one included), or None."""
  path = lock_path(workdir)
  if path in _held:
    return _describe(path)
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return None
  try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    return None  # Nobody holds it exclusively: free (or left by a dead process).
  except OSError:
    return _describe(path)
  finally:
    os.close(fd)  # Closing drops the probe's own shared lock.


def acquire(workdir: str) -> bool:
  """Takes the lock (nested calls in this process just count); raises WorkdirBusy naming the holder.

  Returns False for workdirs that cannot be locked (remote paths).
  """
  if "://" in workdir:
    from absl import logging  # pylint: disable=g-import-not-at-top
    logging.info("Workdir %s is remote: not locked; run one trainer on it at a time.", workdir)
    return False
  path = lock_path(workdir)
  with _guard:
    if path in _held:
      _held[path][1] += 1
      return True
    os.makedirs(os.path.dirname(path), exist_ok=True)
    f = open(path, "a+")  # pylint: disable=consider-using-with
    try:
      fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      f.close()
      raise WorkdirBusy(  # pylint: disable=raise-missing-from
          f"--workdir={os.path.dirname(path)} is being trained by another process "
          f"({_describe(path)}; lock {path}); nothing was changed. Fix: wait for it to finish or stop it, or use "
          "another --workdir.")
    f.seek(0)
    f.truncate()
    json.dump({"pid": os.getpid(), "host": socket.gethostname(),
               "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "argv": sys.argv}, f)
    f.flush()
    _held[path] = [f, 1]
  return True


def release(workdir: str) -> None:
  """Undoes one acquire(); the last one unlocks (the file stays: deleting a lock file races)."""
  path = lock_path(workdir)
  with _guard:
    if path not in _held:
      return
    _held[path][1] -= 1
    if _held[path][1] == 0:
      f, _ = _held.pop(path)
      fcntl.flock(f.fileno(), fcntl.LOCK_UN)
      f.close()


@contextlib.contextmanager
def hold(workdir: str):
  """with hold(workdir): ... - the lock for the duration of the block."""
  locked = acquire(workdir)
  try:
    yield
  finally:
    if locked:
      release(workdir)
