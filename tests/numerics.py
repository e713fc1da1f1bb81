"""Tolerances derived from the computation, not from one machine's rounding (see tests/README.md).

XLA's CPU code generation (vector width, FMA contraction, fusion order) differs between processors,
so float32 results of one program differ in their last bits from machine to machine. Comparisons
therefore take one of two forms:
- exactness (two programs compute the same mathematics): run both in float64 and compare with a
  tolerance a few orders of magnitude above float64 rounding of the computation;
- float32 fidelity (a faster or leaner path must be as accurate as the plain float32 path): measure
  both against a float64 truth and require the candidate's error to be within a small factor of the
  plain path's own float32 error on the same machine, so the bound scales with that machine's
  rounding and with the conditioning of the quantity compared.
"""
import jax
import numpy as np

EPS32 = float(np.finfo(np.float32).eps)  # 1.19e-7: one unit of float32 rounding at 1.0.


def flat(tree) -> np.ndarray:
  """All leaves of a pytree as one float64 vector."""
  return np.concatenate([np.ravel(np.asarray(a, np.float64)) for a in jax.tree_util.tree_leaves(tree)])


def rel_err(got, want) -> float:
  """Whole-pytree relative error ||got - want|| / ||want||; near-zero entries do not dominate it."""
  g, w = flat(got), flat(want)
  return float(np.linalg.norm(g - w) / max(np.linalg.norm(w), np.finfo(np.float64).tiny))


def assert_as_accurate(candidate, baseline, truth, factor: float = 4.0, floor: float = 64 * EPS32,
                       what: str = "") -> None:
  """The candidate's error against a float64 truth is at most `factor` times the baseline's.

  `floor` covers the case where the baseline is by chance nearly exact (a scalar's rounding error can
  land near zero); 64 float32 units is far below any real mistake (which changes results by >= 1e-3).
  """
  e_cand, e_base = rel_err(candidate, truth), rel_err(baseline, truth)
  assert e_cand <= factor * e_base + floor, (
      f"{what}: relative error {e_cand:.3g} against the float64 truth, but the plain float32 path "
      f"has {e_base:.3g} (allowed: {factor} x that + {floor:.2g})")
