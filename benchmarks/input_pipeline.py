"""Throughput of the latent reader on this machine, from synthetic records in a temp dir.

  python -m benchmarks.input_pipeline [--num_records=4096] [--batch_size=256] [--seconds=10]

Writes `num_records` random 32x32x4 latent records (float32 moments of image and flip, as
prepare_imagenet does), reads them with `input_pipeline.latents.make_dataset` (shuffle + repeat,
one process) and prints one JSON object:
  latents_per_s        examples delivered as numpy batches per wall-clock second;
  cpu_us_per_latent    process CPU time (all threads) per example: unlike the wall figure it does
                       not depend on what else runs on the machine;
  est_latents_per_s_2_cores = 2e6 / cpu_us_per_latent, the rate on 2 otherwise idle cores if the
                       tf.data threads keep both busy.
The shuffle buffer defaults to num_records / 8 so that, as on ImageNet (16k buffer, 1.28M records),
the buffer refill at each epoch start is a small part of the run.
"""
import argparse
import json
import os
import resource
import shutil
import tempfile
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from input_pipeline import latents, records  # pylint: disable=g-import-not-at-top


def _cpu_seconds() -> float:
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--num_records", type=int, default=8192)
  p.add_argument("--shuffle_buffer", type=int, default=0, help="default num_records // 8")
  p.add_argument("--shard_size", type=int, default=256)
  p.add_argument("--batch_size", type=int, default=256)
  p.add_argument("--seconds", type=float, default=10.0)
  p.add_argument("--dtype", default="float32", choices=records.DTYPES)
  p.add_argument("--no_shuffle", action="store_true")
  args = p.parse_args()

  tmp = tempfile.mkdtemp(prefix="latent_bench_")
  try:
    rng = np.random.RandomState(0)
    n, shape = args.num_records, (32, 32, 4)
    arrays = {f: rng.normal(size=(n, *shape)).astype(np.float32) for f in records.LATENT_FIELDS}
    arrays["label"] = rng.randint(0, 1000, n)
    t0 = time.time()
    records.write_arrays(tmp, arrays, shard_size=args.shard_size, dtype=args.dtype)
    write_s = time.time() - t0
    del arrays
    it = latents.make_dataset(tmp, batch_size=args.batch_size, seed=0, process_index=0,
                              process_count=1, shuffle=not args.no_shuffle, repeat=True,
                              shuffle_buffer=args.shuffle_buffer or max(1, n // 8))
    for _ in range(3):  # warm-up: fill the shuffle buffer and prefetch
      next(it)
    count, t0, cpu0 = 0, time.time(), _cpu_seconds()
    while time.time() - t0 < args.seconds:
      count += len(next(it)["label"])
    elapsed, cpu = time.time() - t0, _cpu_seconds() - cpu0
    print(json.dumps({
        "latents_per_s": round(count / elapsed, 1), "cpu_us_per_latent": round(1e6 * cpu / count, 1),
        "est_latents_per_s_2_cores": round(2 * count / cpu), "examples": count,
        "seconds": round(elapsed, 2),
        "batch_size": args.batch_size, "latent_shape": list(shape), "dtype": args.dtype,
        "record_bytes": records.RecordLayout(shape, args.dtype).record_bytes,
        "num_records": n, "shuffle": not args.no_shuffle, "cpu_count": os.cpu_count(),
        "load_avg_1min": round(os.getloadavg()[0], 2), "write_s": round(write_s, 2)}))
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  main()
