"""A tiny U-Net MeanFlow on scikit-learn's digits (8x8, unconditional), through the trainer's step.

Exercises the CIFAR-10 recipe's parts at toy scale: U-Net with dropout, EDM augmentation (no
x-flip on digits) with labels as the condition, the v1 time sampler, adaptive weight p = 0.75,
plain Adam with warmup in epochs, EMA updated every 4 steps. Reports the pixel-space Frechet
distance (features in [0, 1], against all 1797 digits) of 1-NFE samples from the untrained and
the trained network.

  python scripts/unet_digits.py --steps 300
"""
import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import cifar10_unet  # noqa: E402
from eval.stats import frechet_distance, stats_from_features  # noqa: E402
from input_pipeline import digits  # noqa: E402
from mf_jax import sampling  # noqa: E402
from mf_jax import train_state as ts  # noqa: E402
from mf_jax import train_step as step_lib  # noqa: E402
from mf_jax.objectives.meanflow import u_fn as meanflow_u_fn  # noqa: E402


# The README run's U-Net; tests use TEST_UNET (one resolution, 8 channels) to keep compiles short.
README_UNET = dict(channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,), dropout=0.1)
TEST_UNET = dict(channels=8, channel_mult=(1,), num_blocks=1, attn_resolutions=(), dropout=0.1)


def config(steps: int, batch: int = 32, unet=None):
  c = cifar10_unet.get_config()
  c.data.update(name="digits", image_size=8, channels=1, num_classes=0, random_flip=False,
                num_train_examples=1500)
  c.model.unet.update(**(unet or README_UNET))
  c.augment.update(xflip=0.0)  # Digits are not mirror-symmetric.
  c.optim.update(learning_rate=2e-3, warmup_epochs=2.0)
  c.ema_decays = (0.99,)
  c.ema_every = 4
  c.train.update(global_batch_size=batch, num_steps=steps)
  return c


def fd_to_digits(samples) -> float:
  """Pixel Frechet distance to all digits; samples in [-1, 1] as the data."""
  feats = lambda x: np.clip((np.asarray(x, np.float64).reshape(len(x), -1) + 1) / 2, 0, 1)
  ref = np.concatenate([digits.load("train")["x"], digits.load("eval")["x"]])
  return frechet_distance(*stats_from_features(feats(samples)), *stats_from_features(feats(ref)))


def run(steps: int = 300, batch: int = 32, seed: int = 0, num_samples: int = 1000, unet=None):
  """Returns (FD untrained, FD trained raw params, FD trained EMA params, seconds, losses)."""
  c = config(steps, batch, unet)
  c.seed = seed
  model, opt = ts.build_model(c), ts.make_optimizer(c)
  state = jax.jit(lambda k: ts.init_state(c, model, opt, k))(jax.random.key(seed, impl="rbg"))
  train_step = step_lib.make_train_step(c, model, opt)
  x_all = jnp.asarray(digits.load("train")["x"])

  def body(state, key):
    idx = jax.random.randint(key, (batch,), 0, len(x_all))
    batch_ = {"x": x_all[idx], "label": jnp.zeros((batch,), jnp.int32)}
    state, metrics = train_step(state, batch_)
    return state, metrics["loss"]

  sample = jax.jit(lambda p, e: sampling.meanflow_steps(meanflow_u_fn(model, p), e,
                                                        jnp.zeros(len(e), jnp.int32), 1))
  noise = jax.random.normal(jax.random.key(seed + 100), (num_samples, 8, 8, 1))
  fd0 = fd_to_digits(sample(state.params, noise))
  start = time.time()
  state, losses = jax.jit(lambda s, keys: jax.lax.scan(body, s, keys))(
      state, jax.random.split(jax.random.key(seed + 1), steps))
  jax.block_until_ready(state)
  seconds = time.time() - start
  assert int(state.step) == steps and int(state.nonfinite_step) < 0
  return (fd0, fd_to_digits(sample(state.params, noise)),
          fd_to_digits(sample(state.ema_params[0], noise)), seconds, np.asarray(losses))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=2000)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--test_unet", action="store_true", help="the test's smaller U-Net")
  args = parser.parse_args()
  fd0, fd, fd_ema, seconds, losses = run(args.steps, args.batch, args.seed,
                                         unet=TEST_UNET if args.test_unet else None)
  print(f"steps {args.steps}: 1-NFE pixel FD untrained {fd0:.3f}, trained {fd:.3f}, "
        f"EMA {fd_ema:.3f}; loss {losses[:10].mean():.3f} -> {losses[-10:].mean():.3f}; "
        f"{seconds:.1f} s incl. compile")


if __name__ == "__main__":
  main()
