"""Training methods as plug-ins: `get(config.method)` returns the method's `Objective`.

Built in: "meanflow" (flow matching is its r_neq_t_ratio = 0 case), "drifting", "mae" (the
feature encoder's masked-autoencoder pretraining). A new method is one new module in this package:
it subclasses `objectives.base.Objective` and calls `register(...)`; every module here is imported
below, so nothing else is edited (docs/objectives.md). Methods defined elsewhere (a test, a
research script) register the same way before the run starts.
"""
import importlib
import pkgutil
from typing import Dict

from mf_jax.objectives.base import FrozenNetwork, Objective

_REGISTRY: Dict[str, Objective] = {}


def register(objective: Objective) -> Objective:
  """Makes `objective` available as config.method = objective.name (a later one replaces it)."""
  if not objective.name:
    raise ValueError(f"{type(objective).__name__} has no name: set the class attribute `name`.")
  _REGISTRY[objective.name] = objective
  return objective


def names():
  return tuple(sorted(_REGISTRY))


def get(name: str) -> Objective:
  if name not in _REGISTRY:
    raise ValueError(f"method={name!r}: allowed values are {list(names())}.")
  return _REGISTRY[name]


def _import_builtin_methods():
  """Every module of this package registers its method on import."""
  for module in pkgutil.iter_modules(__path__):
    if module.name != "base":
      importlib.import_module(f"{__name__}.{module.name}")


_import_builtin_methods()
