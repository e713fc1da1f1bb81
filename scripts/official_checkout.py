"""The official code's files for the golden-file scripts, copied into a temporary folder.

From a bare git directory at a commit (the files are `git archive`d, so the commit is exact), or
from a plain checkout whose commit the caller states.
"""
import os
import shutil
import subprocess


def extract(files, dest, official_git_dir="", official_dir="", commit="HEAD") -> str:
  """Copies `files` (paths in the official repository) into dest; returns the commit."""
  if official_git_dir:
    commit = subprocess.run(["git", "--git-dir", official_git_dir, "rev-parse", commit],
                            check=True, capture_output=True, text=True).stdout.strip()
    archive = subprocess.run(["git", "--git-dir", official_git_dir, "archive", commit, "--",
                              *files], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    return commit
  for f in files:
    os.makedirs(os.path.dirname(os.path.join(dest, f)), exist_ok=True)
    shutil.copy(os.path.join(official_dir, f), os.path.join(dest, f))
  return commit
