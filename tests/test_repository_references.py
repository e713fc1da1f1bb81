"""Every tracked file stands on the repository alone: no citation of the project's private notes
file (the REFERENCE notes, which users do not have) and no path to anything outside the checkout (a
sibling shared folder, the machine that wrote the file), and every relative Markdown link resolves
to a file inside the repository (method notes live in docs/)."""
import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Spelt in pieces so this file does not match itself.
FORBIDDEN = ("REFERENCE" + ".md", ".." + "/shared", "/" + "work/")
MD_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def tracked_files():
  out = subprocess.run(["git", "-C", ROOT, "ls-files", "-z"], capture_output=True, check=True)
  return [p for p in out.stdout.decode().split("\0") if p]


def text(path):
  try:
    with open(os.path.join(ROOT, path), "rb") as f:
      data = f.read()
  except OSError:  # Listed but deleted in the work tree.
    return ""
  return "" if b"\0" in data[:4096] else data.decode("utf-8", "replace")


def offending_lines(files, pattern):
  return [f"{p}:{i}: {line.strip()[:120]}" for p in files
          for i, line in enumerate(text(p).splitlines(), 1) if pattern in line]


def test_no_tracked_file_cites_private_notes_or_outside_paths():
  files = tracked_files()
  assert "README.md" in files and "main.py" in files  # The listing is the real one.
  bad = [hit for pattern in FORBIDDEN for hit in offending_lines(files, pattern)]
  assert not bad, "\n".join(bad)


def test_markdown_links_stay_inside_the_repository():
  bad = []
  for path in tracked_files():
    if not path.endswith(".md"):
      continue
    for target in MD_LINK.findall(text(path)):
      if "://" in target or target.startswith("mailto:"):
        continue
      resolved = os.path.normpath(os.path.join(ROOT, os.path.dirname(path), target))
      if not resolved.startswith(ROOT + os.sep) or not os.path.exists(resolved):
        bad.append(f"{path}: ({target})")
  assert not bad, "\n".join(bad)


def test_the_checks_see_a_citation_when_one_is_there():
  """The scan itself: a line with a forbidden pattern is reported."""
  assert offending_lines(["README.md"], "README")
  assert not offending_lines(["README.md"], FORBIDDEN[0])
