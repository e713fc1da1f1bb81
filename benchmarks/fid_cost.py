"""Measured cost of FID evaluation pieces on this machine, and a 50k-sample estimate. Prints JSON.

Measures (random Inception weights: cost does not depend on the values):
  - Inception compile time and steady per-image feature time at --image_size (resize included);
  - host statistics update per image (float64 scatter of 2048-d features, folds included);
  - the 2048-d Frechet distance (two symmetric eigendecompositions), paid once per evaluation.
Estimate for N samples, given per-image sampling and VAE decoding costs (seconds, same device):
  T(N) = compile + N * (sample_s + decode_s + inception_s + stats_s) + frechet_s

  python -m benchmarks.fid_cost [--batch_size=16 --image_size=256 --sample_s=0 --decode_s=0]
"""
import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from eval import inception, stats  # noqa: E402


def _timed(fn, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def main(argv=None):
  parser = argparse.ArgumentParser()
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--image_size", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--num_samples", type=int, default=50000)
  parser.add_argument("--sample_s", type=float, default=0.0, help="per-image sampling cost (s)")
  parser.add_argument("--decode_s", type=float, default=0.0, help="per-image VAE decode cost (s)")
  args = parser.parse_args(argv)

  params = jax.device_put(inception.random_inception_params(jax.random.key(0)))
  apply_fn = inception.make_apply_fn("tf1")
  images = np.random.default_rng(0).integers(
      0, 256, (args.batch_size, args.image_size, args.image_size, 3), dtype=np.uint8)
  run = lambda: jax.block_until_ready(apply_fn(params, images))
  start = time.perf_counter()
  run()
  compile_s = time.perf_counter() - start
  inception_s = _timed(run, args.repeats) / args.batch_size

  feats = np.asarray(run()["pool"])
  rows = 2048  # two folds of the default 1024-row block, fed in batches of batch_size

  def accumulate():
    acc = stats.StatsAccumulator(inception.POOL_DIM)
    for _ in range(rows // args.batch_size):
      acc.update(feats)
    return acc.cov

  stats_s = _timed(accumulate, args.repeats) / rows

  rng = np.random.default_rng(1)
  a, b = rng.normal(size=(2, 3000, inception.POOL_DIM))
  s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  start = time.perf_counter()
  stats.frechet_distance(a.mean(0), s1, b.mean(0), s2, "eigh")
  frechet_s = time.perf_counter() - start

  per_image = args.sample_s + args.decode_s + inception_s + stats_s
  estimate = compile_s + args.num_samples * per_image + frechet_s
  print(json.dumps({
      "device": str(jax.devices()[0].device_kind), "platform": jax.default_backend(),
      "cpu_count": os.cpu_count(), "machine": platform.machine(),
      "batch_size": args.batch_size, "image_size": args.image_size,
      "inception_compile_s": round(compile_s, 3),
      "inception_s_per_image": round(inception_s, 5),
      "inception_images_per_s": round(1.0 / inception_s, 2),
      "stats_update_s_per_image": round(stats_s, 6),
      "frechet_2048_s": round(frechet_s, 3),
      "sample_s_per_image": args.sample_s, "decode_s_per_image": args.decode_s,
      "formula": "compile + N * (sample_s + decode_s + inception_s + stats_s) + frechet_s",
      "num_samples": args.num_samples,
      "estimated_total_s": round(estimate, 1),
      "estimated_total_h": round(estimate / 3600, 2),
  }))


if __name__ == "__main__":
  from mf_jax import cli  # pylint: disable=g-import-not-at-top
  with cli.user_errors("benchmarks.fid_cost"):
    main()
