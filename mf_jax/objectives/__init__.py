"""Training methods as plug-ins: `get(config.method)` returns the method's `Objective`.

Built in: "meanflow" (flow matching is its r_neq_t_ratio = 0 case), "drifting", "mae" (the
feature encoder's masked-autoencoder pretraining). A new method is one new module in this package:
it subclasses `objectives.base.Objective` and calls `register(...)`; every module here is imported
below, so nothing else is edited (docs/objectives.md). Methods defined elsewhere (a test, a
research script) register the same way before the run starts.
"""
import importlib
import pkgutil

from mf_jax.objectives.base import FrozenNetwork, Objective  # noqa: F401
from mf_jax.objectives.registry import get, names, register  # noqa: F401


def _import_builtin_methods():
  """Every module of this package registers its method on import."""
  for module in pkgutil.iter_modules(__path__):
    if module.name not in ("base", "registry"):
      importlib.import_module(f"{__name__}.{module.name}")


_import_builtin_methods()
