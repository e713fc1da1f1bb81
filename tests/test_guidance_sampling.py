"""Sampling-time classifier-free guidance (sample.cfg_scale, eval.cfg_scales): the guided velocity is
null + s (cond - null), anchored on the unconditional output; checked on a label-dependent stand-in
and through the real jitted sampler."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from mf_jax import generate
from mf_jax import sharding as sharding_lib
from mf_jax import train_state as ts
import numerics

NUM_CLASSES = 10


def stand_in(z, r, t, labels):
  """A network whose output depends on the label (null label NUM_CLASSES included) and the times."""
  y = labels.astype(z.dtype)[:, None]
  return (1.0 + 0.1 * y) * z + y ** 2 + (t - 3.0 * r)[:, None]


@pytest.mark.parametrize("scale", [0.0, 0.5, 2.0, 4.5])
def test_guided_velocity_is_null_plus_scale_times_difference(scale, x64):
  z = jax.random.normal(jax.random.key(0), (6, 3))
  r, t = jnp.linspace(0.0, 0.5, 6), jnp.linspace(0.5, 1.0, 6)
  labels = jnp.array([0, 1, 3, 7, 9, 2])
  cond = stand_in(z, r, t, labels)
  null = stand_in(z, r, t, jnp.full_like(labels, NUM_CLASSES))
  got = generate.guided_u_fn(stand_in, scale, NUM_CLASSES)(z, r, t, labels)
  np.testing.assert_allclose(got, null + scale * (cond - null), rtol=1e-12, atol=1e-12)
  # Not the same as anchoring on the conditional output, by (cond - null) = O(1) here.
  assert np.abs(np.asarray(cond - null)).min() > 0.1


def test_scale_one_is_the_network_itself():
  assert generate.guided_u_fn(stand_in, 1.0, NUM_CLASSES) is stand_in


def test_sampler_with_cfg_scale_two_matches_a_guided_loop(x64):
  """make_sampler(...)(cfg_scale=2) over 2 steps equals a hand-written loop that calls the network
  separately for the labels and the null label: z <- z - (t - r) (null + 2 (cond - null)).
  In float64 (the MLP computes in float64 under x64), to 1e-10 relative."""
  config = tiny.get_config()
  config.model.update(name="mlp", mlp_widths=(16,), compute_dtype="float64")
  model = ts.build_model(config)
  params = model.init(jax.random.key(0), *ts.example_inputs(config))
  mesh = sharding_lib.make_mesh(1, jax.devices()[:1])
  noise = jax.random.normal(jax.random.key(1), (8, 8, 8, 1), jnp.float64)
  labels = jnp.arange(8, dtype=jnp.int32)
  got = generate.make_sampler(config, model, mesh)(params, noise, labels, 2, 2.0)

  u = lambda z, r, t, y: model.apply(params, z, (jnp.full((8,), t), jnp.full((8,), t - r)),
                                     y).reshape(z.shape)
  z = np.asarray(noise)
  for t, r in ((1.0, 0.5), (0.5, 0.0)):
    cond, null = u(z, r, t, labels), u(z, r, t, jnp.full_like(labels, NUM_CLASSES))
    z = z - (t - r) * (null + 2.0 * (cond - null))
  assert np.asarray(got).dtype == np.float64
  assert numerics.rel_err(got, z) < 1e-10
  unguided = generate.make_sampler(config, model, mesh)(params, noise, labels, 2)
  assert numerics.rel_err(unguided, z) > 1e-3  # Guidance changes the samples.
