"""Parity with the official iMF JAX code (Lyy-iiis/imeanflow) on golden outputs it produced.

tests/golden/imf_official.npz (scripts/make_imf_golden.py, which records the official commit) holds
a tiny official imfDiT with random weights, its (u, v) outputs, the official loss and gradient on a
fixed batch with fixed draws, and official 1- and 2-step samples. Our network gets the official
weights through mf_jax.imf_params; our objective gets the official draws (in the official row
layout: r = t first, dropped rows first).

Tolerances: both sides run in float32 with the same operations in a different order (rsqrt vs
1/sqrt, real vs complex rotation, two guidance calls of size B vs one of 2B and one of B). Each
output is a chain of ~5 blocks whose dot products are at most 256 long; with unit roundoff 6e-8 the
typical relative error is ~sqrt(256) * 6e-8 ~ 1e-6 per dot product and a few 1e-6 over the network,
so 1e-5 relative (in norm) leaves a margin. The gradient goes through a jvp and a second
differentiation of the same chain, whose condition is ~10x worse: 1e-4. A real difference (a wrong
rotary pairing, tangent or interval) is of order 1e-2 or more.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mf_jax import imf, imf_params, meanflow
from mf_jax.models import dit_incontext
import golden_files
from numerics import rel_err

RTOL, RTOL_GRAD = 1e-5, 1e-4


@pytest.fixture(scope="module")
def golden():
  return golden_files.load("imf_official.npz")


_tree = golden_files.subtree


@pytest.fixture(scope="module")
def ours(golden):
  """(model, params converted from the official ones, net_fn(params) for the objective)."""
  g = lambda k: int(golden[f"tiny_{k}"])
  model = dit_incontext.InContextDiT(
      variant=f"B/{g('patch_size')}", image_size=g("input_size"), channels=g("in_channels"),
      num_classes=int(golden["num_classes"]), depth=g("depth"), hidden_size=g("hidden_size"),
      num_heads=g("num_heads"), head_depth=g("aux_head_depth"))
  params = jax.tree_util.tree_map(jnp.asarray, imf_params.from_official(_tree(golden, "param")))
  # The converted tree has exactly our model's names and shapes.
  z = jnp.zeros((1, g("input_size"), g("input_size"), g("in_channels")))
  s = jnp.zeros((1,))
  shapes = jax.eval_shape(model.init, jax.random.key(0), z, s, s + 1, s, s + 1,
                          jnp.zeros((1,), jnp.int32))["params"]
  assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(params)
  assert all(a.shape == b.shape for a, b in zip(jax.tree_util.tree_leaves(shapes),
                                                jax.tree_util.tree_leaves(params)))

  def net_fn(p):
    return lambda z, t, h, omega, t_min, t_max, y: model.apply({"params": p}, z, h, omega, t_min,
                                                               t_max, y)
  return model, params, net_fn


def _config(golden):
  config = imf.default_config()
  config.num_classes = int(golden["num_classes"])
  config.adaptive_p = float(golden["method_norm_p"])
  config.adaptive_c = float(golden["method_norm_eps"])
  return config


def test_network_outputs(golden, ours):
  _, params, net_fn = ours
  names = ("z", "t", "h", "omega", "t_min", "t_max", "y")
  u, v = jax.jit(net_fn(params))(*(golden[f"net_{k}"] for k in names))
  assert rel_err(u, golden["net_u"]) < RTOL
  assert rel_err(v, golden["net_v"]) < RTOL


def test_loss_and_gradient(golden, ours):
  _, params, net_fn = ours
  draws = imf.Draws(**{k: jnp.asarray(golden[f"loss_{k}"]) for k in
                       ("r", "t", "e", "omega", "t_min", "t_max", "dropped")})
  assert golden["loss_dropped"].any() and (golden["loss_t"] != golden["loss_r"]).any()
  config = _config(golden)

  @jax.jit
  def loss_and_grad(p):
    return jax.value_and_grad(lambda p_: imf.imf_loss_from_draws(
        net_fn(p_), golden["loss_x"], golden["loss_labels"], draws, config), has_aux=True)(p)

  (loss, metrics), grads = loss_and_grad(params)
  for name in ("loss", "loss_u", "loss_v"):
    assert rel_err(metrics[name], golden[name]) < RTOL, name
  golden_files.assert_gradients_close(grads, imf_params.from_official(_tree(golden, "grad")),
                                      RTOL_GRAD)


def test_split_loss_on_our_layout(golden, ours):
  """The per-part loss on the golden batch with its rows moved to our layout (r != t rows where
  meanflow.r_neq_t_pattern puts them): a batch mean, so the official loss and gradient."""
  _, params, net_fn = ours
  config = _config(golden)
  batch = int(golden["batch"])
  period, n = meanflow.r_neq_t_pattern(batch, config.r_neq_t_ratio)
  ours_avg = np.flatnonzero(np.arange(batch) % period < n)
  official_avg = np.flatnonzero(golden["loss_t"] != golden["loss_r"])
  perm = np.empty(batch, int)
  perm[ours_avg] = official_avg
  perm[np.setdiff1d(np.arange(batch), ours_avg)] = np.setdiff1d(np.arange(batch), official_avg)
  draws = imf.Draws(**{k: jnp.asarray(golden[f"loss_{k}"][perm]) for k in
                       ("r", "t", "e", "omega", "t_min", "t_max", "dropped")})

  @jax.jit
  def loss_and_grad(p):
    return jax.value_and_grad(lambda p_: imf.imf_loss_split_from_draws(
        net_fn(p_), golden["loss_x"][perm], golden["loss_labels"][perm], draws, config),
                              has_aux=True)(p)

  (_, metrics), grads = loss_and_grad(params)
  for name in ("loss", "loss_u", "loss_v"):
    assert rel_err(metrics[name], golden[name]) < RTOL, name
  assert rel_err(grads, imf_params.from_official(_tree(golden, "grad"))) < RTOL_GRAD


def test_omega_inverse_cdf(golden):
  """The official code's omega from its uniform draw (beta = method_cfg_beta, omega in [1, 8))."""
  got = imf.omega_from_uniform(jnp.asarray(golden["loss_omega_u"]),
                               float(golden["method_cfg_beta"]), imf.default_config().omega_max)
  assert rel_err(got, golden["loss_omega"]) < RTOL


@pytest.mark.parametrize("steps", [1, 2])
def test_samples(golden, ours, steps):
  _, params, net_fn = ours
  k = f"sample{steps}"
  sample = jax.jit(lambda p, noise, y: imf.sample(
      net_fn(p), noise, y, steps, float(golden[f"{k}_omega"]), float(golden[f"{k}_t_min"]),
      float(golden[f"{k}_t_max"])))
  got = sample(params, golden[f"{k}_noise"], golden[f"{k}_labels"])
  assert rel_err(got, golden[k]) < RTOL
