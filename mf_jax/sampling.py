"""Samplers: MeanFlow's 1-NFE / k-NFE map and the flow-matching Euler baseline.

Noise lives at t = 1 and data at t = 0. `u_fn(z, r, t, labels)` is the average velocity over [r, t];
its r = t case is the instantaneous velocity that flow matching learns. Both samplers are jitted with
`u_fn` static: pass the same function object (e.g. one built once per set of parameters, or one that
takes parameters through `labels`' closure in an outer jit) to reuse the compilation.
"""
import functools
from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def time_grid(num_steps: int) -> Array:
  """Uniform grid 1 = t_0 > t_1 > ... > t_k = 0, shape [num_steps + 1]."""
  return jnp.linspace(1.0, 0.0, num_steps + 1)


@functools.partial(jax.jit, static_argnames=("u_fn", "num_steps"))
def sample(u_fn: Callable, noise: Array, labels: Array, num_steps: int = 1) -> Array:
  """MeanFlow sampling: z_{i+1} = z_i - (t_i - t_{i+1}) u(z_i, t_{i+1}, t_i); 1-NFE is x = e - u(e, 0, 1)."""
  ts = time_grid(num_steps).astype(noise.dtype)
  ones = jnp.ones((noise.shape[0],), noise.dtype)

  def step(i, z):
    t, r = ts[i], ts[i + 1]
    return z - (t - r) * u_fn(z, r * ones, t * ones, labels)

  return jax.lax.fori_loop(0, num_steps, step, noise)


@functools.partial(jax.jit, static_argnames=("u_fn", "num_steps"))
def sample_flow_matching(u_fn: Callable, noise: Array, labels: Array, num_steps: int) -> Array:
  """Euler integration of the instantaneous velocity u(z, t, t) from t = 1 to t = 0."""
  ts = time_grid(num_steps).astype(noise.dtype)
  ones = jnp.ones((noise.shape[0],), noise.dtype)

  def step(i, z):
    t, t_next = ts[i], ts[i + 1]
    return z - (t - t_next) * u_fn(z, t * ones, t * ones, labels)

  return jax.lax.fori_loop(0, num_steps, step, noise)
