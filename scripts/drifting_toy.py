"""Drifting model on a 2-D toy: an MLP maps 32-d noise to points, raw coordinates are the features.

docs/drifting.md toy recipe: MLP 3x256 SiLU from 32-d noise, Adam 1e-3, 2000 steps of 2048 real
and 2048 generated samples, tau 0.05. The defaults here are smaller (512 + 512, three temperatures)
so that a run takes well under a minute on two CPU cores.

  python scripts/drifting_toy.py --data checkerboard --steps 2000 --batch 512
"""
import argparse
import os
import sys
import time
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from input_pipeline.toy import checkerboard  # noqa: E402
from mf_jax import drifting  # noqa: E402
from mf_jax.distances import energy_distance  # noqa: E402
from mf_jax.models.mlp import MLP  # noqa: E402

NOISE_DIM = 32


def gaussian_mixture(key: jax.Array, n: int) -> jax.Array:
  """Eight Gaussians (std 0.1) on a circle of radius 2, [n, 2]."""
  k_mode, k_noise = jax.random.split(key)
  angle = 2 * jnp.pi * jax.random.randint(k_mode, (n,), 0, 8) / 8
  centers = 2.0 * jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=1)
  return centers + 0.1 * jax.random.normal(k_noise, (n, 2))


DATASETS = {"checkerboard": checkerboard, "gaussians": gaussian_mixture}


def train(data: str = "checkerboard", steps: int = 1500, batch: int = 512, lr: float = 1e-3,
          temperatures=(0.02, 0.05, 0.2), normalize_distances: bool = True,
          normalize_drift: bool = True, seed: int = 0,
          hidden_widths=(256, 256, 256), ema_decay: float = 0.995,
          log_every: int = 0) -> Tuple[MLP, dict, float]:
  """Trains an unconditional MLP generator; returns (model, EMA params, seconds).

  The normalised field keeps unit RMS even at equilibrium (its finite-sample noise is rescaled
  too), so the raw iterate keeps jittering; the EMA of the parameters averages that out, as the
  paper's recipe does (EMA 0.999 over longer runs).
  """
  if data not in DATASETS:
    raise ValueError(f"--data={data!r}: choose one of {sorted(DATASETS)}.")
  sample_data = DATASETS[data]
  config = drifting.default_config()
  config.num_neg, config.num_unc = batch, 0  # One class, no guidance.
  config.noise_shape = (NOISE_DIM,)
  config.temperatures = tuple(temperatures)
  config.normalize_distances = normalize_distances
  config.normalize_drift = normalize_drift
  drifting.validate_config(config)

  model = MLP(out_dim=2, hidden_widths=tuple(hidden_widths))
  key = jax.random.key(seed)
  # Init keys use rbg: threefry for every parameter array compiles slowly on CPU.
  params = jax.jit(model.init)(jax.random.key(seed, impl="unsafe_rbg"), jnp.zeros((1, NOISE_DIM)))
  optimizer = optax.adam(lr)
  opt_state = optimizer.init(params)
  labels = jnp.zeros((1,), jnp.int32)

  def step(carry, key):
    params, opt_state, ema = carry
    k_data, k_loss = jax.random.split(key)
    real = sample_data(k_data, batch)[None]  # [1 class, N_pos, 2]
    loss_fn = lambda p: drifting.drifting_loss(lambda z, a, y: model.apply(p, z), real, labels,
                                               k_loss, config)
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    ema = jax.tree_util.tree_map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, ema, params)
    return (params, opt_state, ema), metrics

  # Steps run in jitted chunks (lax.scan) so Python dispatch does not dominate small models.
  chunk = min(log_every or 100, steps)
  run_chunk = jax.jit(lambda carry, keys: jax.lax.scan(step, carry, keys))
  carry = (params, opt_state, params)
  start = time.time()
  for first in range(0, steps, chunk):
    key, k_chunk = jax.random.split(key)
    carry, metrics = run_chunk(carry, jax.random.split(k_chunk, min(chunk, steps - first)))
    if log_every:
      print(f"step {first + chunk}: " + ", ".join(f"{k}={float(v[-1]):.4g}"
                                                  for k, v in metrics.items()), flush=True)
  params = jax.block_until_ready(carry[2])
  return model, params, time.time() - start


def sample(model: MLP, params, key: jax.Array, n: int) -> np.ndarray:
  return np.asarray(model.apply(params, jax.random.normal(key, (n, NOISE_DIM))))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", default="checkerboard", choices=sorted(DATASETS))
  parser.add_argument("--steps", type=int, default=1500)
  parser.add_argument("--batch", type=int, default=512)
  parser.add_argument("--temperatures", default="0.02,0.05,0.2")
  parser.add_argument("--no_normalize", action="store_true")
  parser.add_argument("--eval_samples", type=int, default=2000)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  model, params, seconds = train(args.data, args.steps, args.batch,
                                 temperatures=[float(t) for t in args.temperatures.split(",")],
                                 normalize_distances=not args.no_normalize, seed=args.seed,
                                 log_every=max(args.steps // 10, 1))
  n = args.eval_samples
  data_a = np.asarray(DATASETS[args.data](jax.random.key(10_001), n))
  data_b = np.asarray(DATASETS[args.data](jax.random.key(10_002), n))
  generated = sample(model, params, jax.random.key(10_003), n)
  print(f"trained {args.steps} steps in {seconds:.1f} s; energy distance to data: generated "
        f"{energy_distance(generated, data_a):.5f}, independent data sample "
        f"{energy_distance(data_b, data_a):.5f} (n = {n})")


if __name__ == "__main__":
  main()
