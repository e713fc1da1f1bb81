"""Throughput of the latent reader on this machine, new (flat records, index sampler) next to the
old (TFRecord, tf.data shuffle buffer), from the same synthetic records in a temp dir.

  python -m benchmarks.input_pipeline [--num_records=8192] [--batch_size=256] [--seconds=10]

Writes `num_records` random 32x32x4 latent records (float32 moments of image and flip, as
prepare_imagenet does) in both formats, then reads each for `seconds` (one process, the step's
batch dict as numpy) in alternating rounds, so both see the same machine load. Prints one JSON
object with, per reader:
  latents_per_s        examples delivered as numpy batches per wall-clock second;
  cpu_us_per_latent    process CPU time (all threads) per example: unlike the wall figure it does
                       not depend on what else runs on the machine;
  est_latents_per_s_2_cores = 2e6 / cpu_us_per_latent, the rate on 2 otherwise idle cores if the
                       reader's threads keep both busy;
and new/old ratios of both. The old reader's shuffle buffer defaults to num_records / 8 (as on
ImageNet, 16k of 1.28M records, its refill at each epoch start is a small part of the run).
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

from input_pipeline import latents, records, tfrecord_legacy  # pylint: disable=g-import-not-at-top


def _cpu_seconds() -> float:
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def _measure(it, seconds: float) -> dict:
  for _ in range(3):  # warm-up: fill buffers and prefetch
    next(it)
  count, t0, cpu0 = 0, time.time(), _cpu_seconds()
  while time.time() - t0 < seconds:
    count += len(next(it)["label"])
  elapsed, cpu = time.time() - t0, _cpu_seconds() - cpu0
  return {"examples": count, "seconds": elapsed, "cpu_seconds": cpu}


def _summary(runs) -> dict:
  count = sum(r["examples"] for r in runs)
  wall, cpu = sum(r["seconds"] for r in runs), sum(r["cpu_seconds"] for r in runs)
  return {"latents_per_s": round(count / wall, 1), "cpu_us_per_latent": round(1e6 * cpu / count, 1),
          "est_latents_per_s_2_cores": round(2 * count / cpu), "examples": count,
          "seconds": round(wall, 2)}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--num_records", type=int, default=8192)
  p.add_argument("--shuffle_buffer", type=int, default=0, help="old reader; default num_records // 8")
  p.add_argument("--shard_size", type=int, default=256)
  p.add_argument("--batch_size", type=int, default=256)
  p.add_argument("--seconds", type=float, default=10.0, help="per reader, over all rounds")
  p.add_argument("--rounds", type=int, default=2, help="alternating rounds per reader")
  p.add_argument("--dtype", default="float32", choices=records.DTYPES)
  args = p.parse_args()

  tmp = tempfile.mkdtemp(prefix="latent_bench_")
  try:
    rng = np.random.RandomState(0)
    n, shape = args.num_records, (32, 32, 4)
    arrays = {f: rng.normal(size=(n, *shape)).astype(np.float32) for f in records.LATENT_FIELDS}
    arrays["label"] = rng.randint(0, 1000, n)
    t0 = time.time()
    records.write_arrays(os.path.join(tmp, "flat"), arrays, shard_size=args.shard_size,
                         dtype=args.dtype)
    write_s = time.time() - t0
    tfrecord_legacy.write_arrays(os.path.join(tmp, "old"), arrays, shard_size=args.shard_size,
                                 dtype=args.dtype)
    del arrays
    readers = {
        "new": latents.make_dataset(os.path.join(tmp, "flat"), global_batch_size=args.batch_size,
                                    seed=0, process_index=0, process_count=1),
        "old": tfrecord_legacy.make_dataset(os.path.join(tmp, "old"), batch_size=args.batch_size,
                                            shuffle_buffer=args.shuffle_buffer or max(1, n // 8))}
    load_before = os.getloadavg()[0]
    runs = {k: [] for k in readers}
    for _ in range(args.rounds):
      for name, it in readers.items():
        runs[name].append(_measure(it, args.seconds / args.rounds))
    result = {k: _summary(v) for k, v in runs.items()}
    result["ratio_new_over_old"] = {
        "latents_per_s": round(result["new"]["latents_per_s"] / result["old"]["latents_per_s"], 2),
        "est_latents_per_s_2_cores": round(result["new"]["est_latents_per_s_2_cores"]
                                           / result["old"]["est_latents_per_s_2_cores"], 2)}
    result.update({
        "batch_size": args.batch_size, "latent_shape": list(shape), "dtype": args.dtype,
        "record_bytes": records.RecordLayout(shape, args.dtype).record_bytes,
        "num_records": n, "cpu_count": os.cpu_count(), "load_avg_1min_before": round(load_before, 2),
        "load_avg_1min_after": round(os.getloadavg()[0], 2), "write_s_new": round(write_s, 2)})
    print(json.dumps(result))
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  from mf_jax import cli  # pylint: disable=g-import-not-at-top
  with cli.user_errors("benchmarks.input_pipeline"):
    main()
