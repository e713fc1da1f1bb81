"""Config fields declared once, by the module that owns their section: default, rule and fix.

A section is a dict {name: Field, or a dict for a sub-section}, e.g. meanflow.CONFIG. From it
`section()` builds the ml_collections.ConfigDict that configs/base.py assembles, `flatten()` the
{dotted name: Field} table that config_checks.FIELDS and workdir_signature.SHAPE_FIELDS are
derived from, and `check()` applies the rules. A rule maps a value to None (good) or to what is
wrong with it, with the allowed values ("must be ...").
"""
import difflib
import numbers
from typing import Any, Callable, Mapping, NamedTuple, Optional

import ml_collections

from mf_jax.errors import ConfigError

Rule = Callable[[object], Optional[str]]


class Field(NamedTuple):
  """One config field. fix: what to set it to, for the error line ("Fix: set --config.X to ...").

  shape: the field can change the training state's shapes (recorded in a workdir's signature).
  field_type: for default None, the type a command-line override must have (a typed placeholder).
  """
  default: Any
  rule: Rule
  fix: str
  shape: bool = False
  field_type: Optional[type] = None


def section(fields: Mapping) -> ml_collections.ConfigDict:
  """The ConfigDict of a section's defaults (a fresh one per call: configs may edit it)."""
  values = {}
  for name, field in fields.items():
    if isinstance(field, Mapping):
      values[name] = section(field)
    elif field.field_type is not None:
      values[name] = ml_collections.FieldReference(field.default, field_type=field.field_type)
    else:
      values[name] = field.default
  return ml_collections.ConfigDict(values)


def flatten(fields: Mapping, prefix: str = "") -> dict:
  """{dotted name: Field} of a section and its sub-sections."""
  flat = {}
  for name, field in fields.items():
    if isinstance(field, Mapping):
      flat.update(flatten(field, f"{prefix}{name}."))
    else:
      flat[prefix + name] = field
  return flat


def problem_message(name: str, value, field: Field) -> Optional[str]:
  problem = field.rule(value)
  return problem and f"{name}={value!r}: {problem}. Fix: set --config.{name} to {field.fix}."


def check(fields: Mapping, config, prefix: str = "") -> None:
  """Raises ConfigError for the first field of `config` (a section named by prefix, "meanflow.")
  that breaks its rule; fields the declarations do not know are left alone."""
  flat = flatten(fields)
  for name in config.keys():
    value = config[name]
    if hasattr(value, "keys") and isinstance(fields.get(name), Mapping):
      check(fields[name], value, f"{prefix}{name}.")
    elif name in flat:
      message = problem_message(prefix + name, value, flat[name])
      if message:
        raise ConfigError(message)


def field_names(config, prefix="") -> list:
  """Dotted names of every leaf field of a config (sections recursed)."""
  names = []
  for key, value in config.items():
    if hasattr(value, "items"):
      names += field_names(value, f"{prefix}{key}.")
    else:
      names.append(prefix + key)
  return names


def unknown_field_message(config, dotted: str) -> Optional[str]:
  """For an override path that does not exist: names the section and the closest valid names."""
  node, parts = config, dotted.split(".")
  for i, part in enumerate(parts):
    section = ".".join(parts[:i]) or "the top level"
    if not hasattr(node, "keys"):
      return (f"--config.{dotted}: {section} is a field ({node!r}), not a section with "
              f"sub-fields.")
    if part not in node.keys():
      valid = sorted(node.keys())
      close = difflib.get_close_matches(part, valid, n=3, cutoff=0.5)
      hint = f"did you mean {' or '.join(close)}? " if close else ""
      return (f"--config.{dotted}: {section} has no field {part!r}; {hint}"
              f"valid names in {section}: {', '.join(valid)}.")
    node = node[part]
  return None


# ---------------------------------------------------------------------------------------------
# Rules.

def _is_int(v):
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def integer(lo=None, hi=None) -> Rule:
  def rule(v):
    if not _is_int(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
      bounds = " and ".join(s for s in (lo is not None and f">= {lo}", hi is not None and f"<= {hi}")
                            if s)
      return f"must be an integer{' ' + bounds if bounds else ''}"
    return None
  return rule


def _span(lo, hi, lo_open, hi_open) -> str:
  if lo is not None and hi is not None:
    return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
  if lo is not None:
    return f"{'>' if lo_open else '>='} {lo}"
  return "" if hi is None else f"{'<' if hi_open else '<='} {hi}"


def _in_range(v, lo, hi, lo_open, hi_open) -> bool:
  if not isinstance(v, numbers.Real) or isinstance(v, bool) or v != v:  # v != v: NaN.
    return False
  return ((lo is None or (v > lo if lo_open else v >= lo))
          and (hi is None or (v < hi if hi_open else v <= hi)))


def number(lo=None, hi=None, lo_open=False, hi_open=False) -> Rule:
  message = f"must be a number {_span(lo, hi, lo_open, hi_open)}".strip()
  return lambda v: None if _in_range(v, lo, hi, lo_open, hi_open) else message


def choice(*options) -> Rule:
  return lambda v: None if v in options else f"allowed values are {list(options)}"


def boolean() -> Rule:
  return lambda v: None if isinstance(v, bool) else "must be True or False"


def text() -> Rule:
  return lambda v: None if isinstance(v, str) else "must be a string"


def text_tuple(v) -> Optional[str]:
  """A tuple (possibly empty) of strings."""
  if isinstance(v, (tuple, list)) and all(isinstance(x, str) for x in v):
    return None
  return "must be a tuple of strings"


def optional(rule: Rule) -> Rule:
  return lambda v: None if v is None else rule(v)


def int_tuple(lo=1, allow_empty=False) -> Rule:
  def rule(v):
    if isinstance(v, (tuple, list)) and (v or allow_empty) and all(_is_int(x) and x >= lo for x in v):
      return None
    return f"must be a {'' if allow_empty else 'non-empty '}tuple of integers >= {lo}"
  return rule


def number_tuple(lo=None, hi=None, lo_open=False, hi_open=False) -> Rule:
  message = f"must be a tuple of numbers, each {_span(lo, hi, lo_open, hi_open)}"
  return lambda v: (None if isinstance(v, (tuple, list)) and all(
      _in_range(x, lo, hi, lo_open, hi_open) for x in v) else message)


def interval_tuple(v) -> Optional[str]:
  """() or a guidance interval (t_min, t_max) with 0 <= t_min <= t_max <= 1."""
  if isinstance(v, (tuple, list)) and (not v or (len(v) == 2 and all(
      _in_range(x, 0.0, 1.0, False, False) for x in v) and v[0] <= v[1])):
    return None
  return "must be () or a pair (t_min, t_max) with 0 <= t_min <= t_max <= 1"


def interval_tuples(v) -> Optional[str]:
  """A tuple of guidance intervals, each (t_min, t_max) with 0 <= t_min <= t_max <= 1."""
  if isinstance(v, (tuple, list)) and all(
      isinstance(i, (tuple, list)) and i and interval_tuple(i) is None for i in v):
    return None
  return "must be a tuple of pairs (t_min, t_max), each with 0 <= t_min <= t_max <= 1"


POSITIVE = integer(lo=1)
NON_NEGATIVE = integer(lo=0)
FRACTION = number(0.0, 1.0)
