"""meanflow_loss runs the jvp only where r != t and batches the guidance calls; it must equal the
plain formulation meanflow_loss_plain (jvp and guidance calls over the whole batch) in loss and
grads."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.base import meanflow_config
from mf_jax import meanflow
import numerics


def small_net(params, z, r, t, labels):
  """A small conditional network u(z, r, t, y) [B, 8, 8, 1]: nonlinear in z, t, t - r and the label.

  The fast path's logic (which rows take the jvp, how guidance calls are batched) does not depend on
  the architecture, so a network that compiles in a second stands in for the DiT here.
  """
  h = z.reshape(z.shape[0], -1) @ params["w_in"]
  h = h + jnp.sin(t[:, None] * params["w_t"]) + jnp.cos((t - r)[:, None] * params["w_h"])
  h = jnp.tanh(h + params["emb"][labels])
  return (h @ params["w_out"]).reshape(z.shape)


@pytest.fixture(scope="module")
def net():
  """float64 parameters and data: the test checks exactness, so float32 rounding (amplified by the
  jvp-based gradient, and different from one processor to the next) is kept out of it."""
  with jax.enable_x64(True):
    ks = jax.random.split(jax.random.key(0), 6)
    shapes = dict(w_in=(64, 32), w_t=(32,), w_h=(32,), emb=(11, 32), w_out=(32, 64))
    params = {name: jax.random.normal(k, shape, jnp.float64) / np.sqrt(shape[0])
              for k, (name, shape) in zip(ks, shapes.items())}
    x = jax.random.normal(ks[-1], (16, 8, 8, 1), jnp.float64)
  return params, x, jnp.arange(16) % 10


@pytest.mark.parametrize("ratio,omega,kappa,t_hi", [
    (0.25, 1.0, 0.0, 1.0), (0.25, 2.0, 0.5, 0.7), (0.0, 3.0, 0.0, 1.0), (1.0, 1.5, 0.3, 1.0),
    (0.75, 1.0, 0.0, 1.0)])
def test_fast_path_equals_reference(net, ratio, omega, kappa, t_hi):
  params, x, labels = net
  cfg = meanflow_config(num_classes=10)
  cfg.update(r_neq_t_ratio=ratio, guidance_omega=omega, guidance_kappa=kappa, guidance_t_max=t_hi,
             class_dropout=0.25)
  u_fn = lambda p: (lambda z, r, t, y: small_net(p, z, r, t, y))
  key = jax.random.key(3)
  with jax.enable_x64(True):
    fast = jax.jit(jax.value_and_grad(
        lambda p: meanflow.meanflow_loss(u_fn(p), x, labels, key, cfg)[0]))
    ref = jax.jit(jax.value_and_grad(
        lambda p: meanflow.meanflow_loss_plain(u_fn(p), x, labels, key, cfg)[0]))
    (l_fast, g_fast), (l_ref, g_ref) = fast(params), ref(params)
  assert l_fast.dtype == jnp.float64
  # Same mathematics in a different order: float64 rounding (1e-16) times the condition of a
  # jvp-based gradient (~1e3) is far below 1e-10; a misplaced row or guidance weight is >= 1e-3.
  assert numerics.rel_err(l_fast, l_ref) < 1e-10
  assert numerics.rel_err(g_fast, g_ref) < 1e-10


def test_pattern_is_interleaved_and_exact():
  assert meanflow.r_neq_t_pattern(256, 0.25) == (4, 1)
  assert meanflow.r_neq_t_pattern(256, 0.75) == (4, 3)
  assert meanflow.r_neq_t_pattern(256, 0.0) == (1, 0)
  assert meanflow.r_neq_t_pattern(10, 0.25) == (10, 2)  # 4 does not divide 10: one period.
