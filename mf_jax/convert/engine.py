"""The one converter loop: map source names by a rule table, fix layouts, check every shape.

A format (mf_jax/convert/formats/*.py) is a table of rules `(source pattern, target, layout)`:
  source: a regex matched in full against a source key ('/'-joined for nested trees, as stored
          for PyTorch state dicts, e.g. 'enc.8x8_conv.weight');
  target: a `re` template ('block_\\1/attn/qkv/\\2'), or several joined by '|' (the first one
          present in the target tree wins: PyTorch's 'weight' is a Flax 'kernel' or 'scale'), or a
          function of the match, or None (a key dropped on purpose, e.g. BN step counters);
  layout: how a source tensor becomes the target's (LAYOUTS: PyTorch conv OIHW -> HWIO, linear
          [out, in] -> [in, out], ...).
The first matching rule wins. `convert` checks the result against the target's abstract tree
(jax.eval_shape of the Flax model, nothing allocated) and collects EVERY problem (unmapped source
keys, misshaped tensors, missing target keys) before raising one ConversionError that lists them.

This module knows no model and no trainer: it imports numpy, jax and flax only.
"""
import dataclasses
import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import jax
import numpy as np
from flax import traverse_util


class UserError(ValueError):
  """A user's mistake: `subject` (a file or flag) has `problem`; `fix` says the way out;
  `details`: further lines (the problem list of a source that does not fit)."""

  def __init__(self, subject: str, problem: str, fix: str = "", details: Sequence[str] = ()):
    self.subject, self.problem, self.fix, self.details = subject, problem, fix, list(details)
    super().__init__(subject, problem, fix)

  def __str__(self):
    return (f"{self.subject}: {self.problem}" + (f". Fix: {self.fix}" if self.fix else "")
            + "".join(f"\n  {line}" for line in self.details))


class SourceError(UserError):
  """A source file that cannot be read (absent, empty, not the expected format): names the file."""


class ConversionError(UserError):
  """A source that does not fit its target: `problems` holds one line per problem. The source's
  file is known to the caller (the CLI names it), so str() leads with the headline."""

  def __init__(self, headline: str, problems: Sequence[str], fix: str = ""):
    self.problems = list(problems)
    super().__init__("the source", f"{headline}; {len(self.problems)} problem(s)", fix,
                     self.problems)

  def __str__(self):
    return (f"{self.problem}:" + "".join(f"\n  {line}" for line in self.details)
            + (f"\nFix: {self.fix}" if self.fix else ""))


# ---------------------------------------------------------------------------------------- layouts
def _conv(a, want):
  """PyTorch conv weight [out, in, kh, kw] -> Flax kernel [kh, kw, in, out]."""
  return a.transpose(2, 3, 1, 0) if a.ndim == 4 else a


def _linear(a, want):
  """PyTorch linear weight [out, in] -> Flax kernel [in, out]."""
  return a.T if a.ndim == 2 else a


def _torch_by_rank(a, want):
  """A PyTorch weight whose kind shows in its rank: 4 conv, 2 linear, else a vector (norms)."""
  return _linear(_conv(a, want), want) if a.ndim == 2 else _conv(a, want)


def _torch_1x1_as_dense(a, want):
  """As _torch_by_rank, plus a 1x1 conv [out, in, 1, 1] feeding a Dense kernel [in, out]."""
  if a.ndim == 4 and len(want) == 2:
    a = a.reshape(a.shape[:2])
  return _torch_by_rank(a, want)


def _drop_batch_axis(a, want):
  """A table stored with a leading batch axis of 1 ([1, L, C] -> [L, C])."""
  return a[0] if a.ndim == len(want) + 1 and a.shape[:1] == (1,) else a


def _add_batch_axis(a, want):
  """A table the target keeps with a leading batch axis of 1 ([L, C] -> [1, L, C])."""
  return a[None] if a.ndim + 1 == len(want) and want[:1] == (1,) else a


LAYOUTS: Dict[str, Callable[[np.ndarray, Tuple[int, ...]], np.ndarray]] = {
    "copy": lambda a, want: a,
    "conv": _conv,
    "linear": _linear,
    "torch": _torch_by_rank,
    "torch_1x1_dense": _torch_1x1_as_dense,
    "drop_batch_axis": _drop_batch_axis,
    "add_batch_axis": _add_batch_axis,
}


@dataclasses.dataclass(frozen=True)
class Rule:
  source: str
  target: Union[str, Callable[[re.Match], str], None]
  layout: str = "copy"


def rules(*table) -> Tuple[Rule, ...]:
  """Rules from tuples (source, target[, layout]); checks the layout names once, at import."""
  out = tuple(Rule(*row) for row in table)
  for r in out:
    if r.layout not in LAYOUTS:
      raise ValueError(f"rule {r.source!r}: unknown layout {r.layout!r}; known: {sorted(LAYOUTS)}")
  return out


# ---------------------------------------------------------------------------------------- trees
def flat(tree: Mapping[str, Any]) -> Dict[str, Any]:
  """A nested dict -> {'/'-joined path: leaf}; a flat dict (PyTorch state dict) is kept as is."""
  if all(not isinstance(v, Mapping) for v in tree.values()):
    return dict(tree)
  return traverse_util.flatten_dict(dict(tree), sep="/")


def nest(flat_tree: Mapping[str, Any]) -> Dict[str, Any]:
  return traverse_util.unflatten_dict(dict(flat_tree), sep="/")


def abstract_params(init_fn: Callable[[], Any]) -> Dict[str, jax.ShapeDtypeStruct]:
  """{path: ShapeDtypeStruct} under "params" of a Flax init function (nothing allocated)."""
  variables = jax.eval_shape(init_fn)
  return flat(variables["params"] if "params" in variables else variables)


def as_numpy(value) -> np.ndarray:
  if hasattr(value, "detach"):  # torch.Tensor, without importing torch.
    return value.detach().cpu().numpy()
  return np.asarray(value)


def _resolve(rule: Rule, match: re.Match, target: Mapping[str, Any]) -> Optional[str]:
  if callable(rule.target):
    options = rule.target(match).split("|")
  else:
    options = [match.expand(t) for t in rule.target.split("|")]
  return next((o for o in options if o in target), options[0])


def map_name(name: str, table: Sequence[Rule], target: Mapping[str, Any] = ()):
  """(rule, target path) of the first rule matching `name`; (None, None) if none matches."""
  for rule in table:
    m = re.fullmatch(rule.source, name)
    if m:
      return rule, (None if rule.target is None else _resolve(rule, m, target))
  return None, None


def _shape(s) -> Tuple[int, ...]:
  return tuple(s.shape) if hasattr(s, "shape") else tuple(s)


def convert(source: Mapping[str, Any], table: Sequence[Rule], target: Mapping[str, Any],
            problems: Optional[List[str]] = None, prefix: str = "", dtype: Any = None
            ) -> Dict[str, np.ndarray]:
  """Maps every source key onto `target` ({path: ShapeDtypeStruct or shape}); {path: array}.

  Appends every problem to `problems` (a list the caller owns: several sources can share one
  report) and raises nothing; `report` raises. With problems=None it raises ConversionError at
  once. prefix: written before source keys in problem lines (where the tree was found).
  dtype: None keeps the source dtype, "target" casts to the target's dtype, else casts to it.
  """
  raise_here = problems is None
  problems = [] if raise_here else problems
  out, misshaped = {}, set()
  for name, value in sorted(flat(source).items()):
    rule, path = map_name(name, table, target)
    if rule is not None and rule.target is None:
      continue  # Dropped on purpose by the table.
    value = as_numpy(value)
    if path is None or path not in target:
      problems.append(f"unmapped: {prefix}{name} {value.shape}"
                      + (f" (-> {path}, not in this model)" if path else ""))
      continue
    want = _shape(target[path])
    array = LAYOUTS[rule.layout](value, want)
    if tuple(array.shape) != want:
      problems.append(f"misshaped: {prefix}{name} {value.shape} -> {path} {want}")
      misshaped.add(path)
      continue
    if dtype is not None:
      array = np.asarray(array, target[path].dtype if dtype == "target" else dtype)
    out[path] = array
  for path in sorted(set(target) - set(out) - misshaped):
    problems.append(f"missing: {path} {_shape(target[path])}"
                    + (f" (nothing in {prefix.rstrip('/')})" if prefix else ""))
  if raise_here:
    report(problems, "the source does not fit the model")
  return out


def shape_problems(shapes: Mapping[str, Any], target: Mapping[str, Any]) -> List[str]:
  """Problems of a file already in the target's names ({name: shape}): the same three kinds."""
  identity = rules((r"(.*)", r"\1"))
  problems: List[str] = []
  convert({k: np.broadcast_to(np.zeros((), np.int8), _shape(v)) for k, v in shapes.items()},
          identity, target, problems)
  return problems


def report(problems: Sequence[str], headline: str, fix: str = "") -> None:
  """Raises one ConversionError listing every problem, if there is any."""
  if problems:
    raise ConversionError(headline, problems, fix)
