"""meanflow_loss runs the jvp only where r != t and batches the guidance calls; it must equal the
plain formulation (jvp over the whole batch, guidance calls over the whole batch) in loss and grads."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.base import meanflow_config
from mf_jax import meanflow
from mf_jax.models.dit import DiT


def reference_loss(u_fn, x, labels, key, cfg):
  """The objective written out over the whole batch, from the building blocks."""
  k_time, k_noise, k_drop = jax.random.split(key, 3)
  r, t = meanflow.sample_times(k_time, x.shape[0], cfg)
  e = jax.random.normal(k_noise, x.shape, x.dtype)
  tb = t[:, None, None, None]
  z, v = (1 - tb) * x + tb * e, e - x
  dropped = jax.random.bernoulli(k_drop, cfg.class_dropout, (x.shape[0],))
  labels = jnp.where(dropped, cfg.num_classes, labels)
  v_tilde = meanflow.guided_velocity(u_fn, z, t, v, labels, dropped, cfg)
  u, u_tgt = meanflow.average_velocity_target(u_fn, z, r, t, v_tilde, labels)
  return meanflow.adaptive_weighted_loss(u, u_tgt, cfg.adaptive_p, cfg.adaptive_c)[0]


@pytest.fixture(scope="module")
def net():
  model = DiT(variant="S/2", depth=2, hidden_size=32, num_heads=2, image_size=8, channels=1,
              num_classes=10)
  x = jax.random.normal(jax.random.key(0), (16, 8, 8, 1))
  t = jnp.full((16,), 0.5)
  params = model.init(jax.random.key(1), x, (t, t), jnp.zeros(16, jnp.int32))
  params = jax.tree_util.tree_map(lambda p: p + 0.02 * jnp.sign(p + 0.5), params)  # Off zero-init.
  return model, params, x, jnp.arange(16) % 10


@pytest.mark.parametrize("ratio,omega,kappa,t_hi", [
    (0.25, 1.0, 0.0, 1.0), (0.25, 2.0, 0.5, 0.7), (0.0, 3.0, 0.0, 1.0), (1.0, 1.5, 0.3, 1.0),
    (0.75, 1.0, 0.0, 1.0)])
def test_fast_path_equals_reference(net, ratio, omega, kappa, t_hi):
  model, params, x, labels = net
  cfg = meanflow_config(num_classes=10)
  cfg.update(r_neq_t_ratio=ratio, guidance_omega=omega, guidance_kappa=kappa, guidance_t_max=t_hi,
             class_dropout=0.25)
  u_fn = lambda p: (lambda z, r, t, y: model.apply(p, z, (t, t - r), y))
  key = jax.random.key(3)
  fast = jax.value_and_grad(lambda p: meanflow.meanflow_loss(u_fn(p), x, labels, key, cfg)[0])
  ref = jax.value_and_grad(lambda p: reference_loss(u_fn(p), x, labels, key, cfg))
  (l_fast, g_fast), (l_ref, g_ref) = fast(params), ref(params)
  np.testing.assert_allclose(l_fast, l_ref, rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(g_fast), jax.tree_util.tree_leaves(g_ref)):
    np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-6)


def test_pattern_is_interleaved_and_exact():
  assert meanflow.r_neq_t_pattern(256, 0.25) == (4, 1)
  assert meanflow.r_neq_t_pattern(256, 0.75) == (4, 3)
  assert meanflow.r_neq_t_pattern(256, 0.0) == (1, 0)
  assert meanflow.r_neq_t_pattern(10, 0.25) == (10, 2)  # 4 does not divide 10: one period.
