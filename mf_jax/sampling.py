"""Samplers: MeanFlow's 1-NFE / k-NFE map and the flow-matching Euler baseline.

Noise lives at t = 1 and data at t = 0. `u_fn(z, r, t, labels)` is the average velocity over [r, t];
its r = t case is the instantaneous velocity that flow matching learns. `sample` and
`sample_flow_matching` are jitted with `u_fn` static: pass the same function object to reuse the
compilation. Inside a jitted function whose `u_fn` closes over traced parameters, call the
un-jitted loops `meanflow_steps` / `euler_steps` instead.
"""
from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def time_grid(num_steps: int) -> Array:
  """Uniform grid 1 = t_0 > t_1 > ... > t_k = 0, shape [num_steps + 1]."""
  return jnp.linspace(1.0, 0.0, num_steps + 1)


def meanflow_steps(u_fn: Callable, noise: Array, labels: Array, num_steps: int = 1) -> Array:
  """MeanFlow sampling: z_{i+1} = z_i - (t_i - t_{i+1}) u(z_i, t_{i+1}, t_i); 1-NFE is x = e - u(e, 0, 1)."""
  ts = time_grid(num_steps).astype(noise.dtype)
  ones = jnp.ones((noise.shape[0],), noise.dtype)

  def step(i, z):
    t, r = ts[i], ts[i + 1]
    return z - (t - r) * u_fn(z, r * ones, t * ones, labels)

  return jax.lax.fori_loop(0, num_steps, step, noise)


def euler_steps(u_fn: Callable, noise: Array, labels: Array, num_steps: int) -> Array:
  """Euler integration of the instantaneous velocity u(z, t, t) from t = 1 to t = 0."""
  ts = time_grid(num_steps).astype(noise.dtype)
  ones = jnp.ones((noise.shape[0],), noise.dtype)

  def step(i, z):
    t, t_next = ts[i], ts[i + 1]
    return z - (t - t_next) * u_fn(z, t * ones, t * ones, labels)

  return jax.lax.fori_loop(0, num_steps, step, noise)


def guided_u_fn(u_fn: Callable, cfg_scale: float, num_classes: int) -> Callable:
  """Classifier-free guidance at sampling time, u = u_null + s (u_cond - u_null), 2 NFE per step;
  cfg_scale = 1.0 returns u_fn itself. The null label is num_classes.

  MeanFlow usually trains guidance into the target instead (meanflow.guidance_omega), which is free.
  """
  if cfg_scale == 1.0:
    return u_fn
  def guided(z, r, t, labels):
    both = u_fn(jnp.concatenate([z, z]), jnp.concatenate([r, r]), jnp.concatenate([t, t]),
                jnp.concatenate([labels, jnp.full_like(labels, num_classes)]))
    cond, null = jnp.split(both, 2)
    return null + cfg_scale * (cond - null)
  return guided


sample = jax.jit(meanflow_steps, static_argnames=("u_fn", "num_steps"))
sample_flow_matching = jax.jit(euler_steps, static_argnames=("u_fn", "num_steps"))
