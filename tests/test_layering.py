"""The project's import graph: no cycles, and the core never imports upwards.

Layers, bottom up: the core (objectives, networks, samplers: what a method is, with no knowledge of
how a run is driven), then the trainer (mf_jax/train*.py, checkpoints, config checks, generate),
input_pipeline/ and eval/, then entry points (main.py, benchmarks/, studies/, scripts/). Every
import counts, also one inside a function: a lazy import still ties the modules together.
"""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("mf_jax", "input_pipeline", "eval", "configs", "benchmarks", "studies", "scripts")
# The core: modules of these prefixes import nothing of UPPER.
CORE = ("mf_jax.objectives", "mf_jax.models", "mf_jax.meanflow", "mf_jax.drifting",
        "mf_jax.drifting_field", "mf_jax.drifting_features", "mf_jax.sampling", "mf_jax.networks",
        "mf_jax.class_queues", "mf_jax.augment", "mf_jax.distances", "mf_jax.errors",
        "mf_jax.sharding", "mf_jax.perceptual")
UPPER = ("mf_jax.train", "mf_jax.train_step", "mf_jax.train_state", "mf_jax.checkpointing",
         "mf_jax.config_checks", "mf_jax.workdir_signature", "mf_jax.generate", "mf_jax.run_info",
         "mf_jax.writers", "mf_jax.convert", "input_pipeline", "eval", "configs", "benchmarks",
         "studies", "scripts", "main")


def _module_name(path, root):
  rel = os.path.relpath(path, root)[:-len(".py")].replace(os.sep, ".")
  return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def project_modules(root=ROOT):
  """{module name: file path} of every .py file in the project's packages and main.py."""
  found = {"main": os.path.join(root, "main.py")}
  for package in PACKAGES:
    for folder, _, files in os.walk(os.path.join(root, package)):
      for name in files:
        if name.endswith(".py"):
          path = os.path.join(folder, name)
          found[_module_name(path, root)] = path
  return found


def imports_of(path, name, modules):
  """Project modules `path` imports (anywhere in the file), resolved to module names."""
  tree = ast.parse(open(path).read(), path)
  package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      targets = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] +
                        ([base] if base else []))
      # `from pkg import mod` imports pkg.mod when that is a module, else a name of pkg.
      targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                 for a in node.names]
    else:
      continue
    for target in targets:
      while target and target not in modules:  # `import a.b.c` of a package: its module.
        target = target.rpartition(".")[0]
      if target and target != name:
        out.add(target)
  return out


def import_graph(root=ROOT):
  modules = project_modules(root)
  graph = {name: imports_of(path, name, modules) for name, path in modules.items()}
  for name, path in modules.items():  # A package that imports all its modules at run time
    if path.endswith("__init__.py") and "pkgutil.iter_modules(__path__)" in open(path).read():
      graph[name] |= {m for m in modules if m.rpartition(".")[0] == name}  # (the objectives).
  return graph


def _within(name, prefixes):
  return any(name == p or name.startswith(p + ".") for p in prefixes)


def find_cycle(graph):
  """One import cycle as a list of modules [a, b, ..., a], or None."""
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == "open":
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        cycle = visit(nxt)
        if cycle:
          return cycle
    state[node] = "done"
    stack.pop()
    return None

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node)
      if cycle:
        return cycle
  return None


def upward_imports(graph):
  """(core module, upper module) pairs where the core imports upwards."""
  return sorted((a, b) for a, targets in graph.items() if _within(a, CORE)
                for b in targets if _within(b, UPPER) and not _within(b, CORE))


def test_the_project_has_no_import_cycle():
  cycle = find_cycle(import_graph())
  assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_core_never_imports_the_trainer_input_pipeline_or_eval():
  assert upward_imports(import_graph()) == []


def test_the_checks_see_a_planted_cycle_and_a_planted_upward_import(tmp_path):
  """The two checks on a copy of the project with one bad import added to a core module: both
  must fire (a check that cannot fail proves nothing)."""
  import shutil  # pylint: disable=import-outside-toplevel
  for package in PACKAGES:
    shutil.copytree(os.path.join(ROOT, package), tmp_path / package,
                    ignore=shutil.ignore_patterns("__pycache__", "golden", "*.npz", "*.png"))
  shutil.copy(os.path.join(ROOT, "main.py"), tmp_path / "main.py")
  graph = import_graph(str(tmp_path))
  assert find_cycle(graph) is None and upward_imports(graph) == []
  sampling = tmp_path / "mf_jax" / "sampling.py"
  sampling.write_text(sampling.read_text() + "\n\ndef _planted():\n  from mf_jax import train_step\n")
  graph = import_graph(str(tmp_path))
  assert ("mf_jax.sampling", "mf_jax.train_step") in upward_imports(graph)
  cycle = find_cycle(graph)
  assert cycle is not None and "mf_jax.sampling" in cycle


@pytest.mark.parametrize("source,name,want", [
    ("from mf_jax import networks, objectives\n", "mf_jax.x", {"mf_jax.networks", "mf_jax.objectives"}),
    ("from . import base\n", "mf_jax.objectives.meanflow", {"mf_jax.objectives.base"}),
    ("import mf_jax.models.dit as d\n", "mf_jax.x", {"mf_jax.models.dit"}),
    ("from mf_jax.models.dit import DiT\n", "mf_jax.x", {"mf_jax.models.dit"}),
])
def test_imports_are_resolved_to_modules(tmp_path, source, name, want):
  path = tmp_path / "m.py"
  path.write_text(source)
  modules = {m: "" for m in ("mf_jax", "mf_jax.networks", "mf_jax.objectives",
                             "mf_jax.objectives.base", "mf_jax.models", "mf_jax.models.dit")}
  assert imports_of(str(path), name, modules) == want
