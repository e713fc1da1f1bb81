"""The official code's files for the golden-file scripts, copied into a temporary folder.

From a bare git directory at a commit (the files are `git archive`d, so the commit is exact), or
from a plain checkout whose commit the caller states.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import types


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


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # This repository.
GOLDEN = os.path.join(ROOT, "tests", "golden")


def parse_args(description: str, repository: str, commit: str, out_name: str):
  """The golden scripts' flags: the official code from --official_git_dir (a git dir, e.g. the
  fetch tool's) or --official_dir (a checkout at --commit), and --out (default tests/golden/...)."""
  parser = argparse.ArgumentParser(description=description)
  src = parser.add_mutually_exclusive_group(required=True)
  src.add_argument("--official_git_dir", help=f"git dir of {repository} (the fetch tool's)")
  src.add_argument("--official_dir", help=f"a checkout of {repository} at --commit")
  parser.add_argument("--commit", default=commit)
  parser.add_argument("--out", default=os.path.join(GOLDEN, out_name))
  return parser.parse_args()


def temporary_copy(files, args, prefix: str):
  """(temporary folder, commit): `files` of the official code named by parse_args's flags."""
  tmp = tempfile.mkdtemp(prefix=prefix)
  return tmp, extract(files, tmp, args.official_git_dir, args.official_dir, args.commit)


def stub_pmf_unused_modules() -> None:
  """The official pMF utils/auxloss_util.py imports lpips_j (its LPIPS fetches weights from the
  Hugging Face hub) and utils/logging_util.py imports wandb; the golden script and the FLOP count
  import the crop from there but use neither, so empty stand-ins are installed."""
  sys.modules.setdefault("wandb", types.ModuleType("wandb"))
  lpips_j = types.ModuleType("lpips_j")
  lpips_j.lpips = types.ModuleType("lpips_j.lpips")
  lpips_j.lpips.LPIPS = None
  sys.modules.setdefault("lpips_j", lpips_j)
  sys.modules.setdefault("lpips_j.lpips", lpips_j.lpips)
