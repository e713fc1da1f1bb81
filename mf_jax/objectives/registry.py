"""The registry of methods: name -> Objective (mf_jax/objectives/__init__.py re-exports it)."""
from typing import Dict, Tuple

from mf_jax.objectives.base import Objective

_REGISTRY: Dict[str, Objective] = {}


def register(objective: Objective) -> Objective:
  """Makes `objective` available as config.method = objective.name (a later one replaces it)."""
  if not objective.name:
    raise ValueError(f"{type(objective).__name__} has no name: set the class attribute `name`.")
  _REGISTRY[objective.name] = objective
  return objective


def names() -> Tuple[str, ...]:
  return tuple(sorted(_REGISTRY))


def get(name: str) -> Objective:
  if name not in _REGISTRY:
    raise ValueError(f"method={name!r}: allowed values are {list(names())}.")
  return _REGISTRY[name]
