r"""The earlier latent format (TFRecord shards, "mf_jax-latents-tfrecord-v1"): one-time converter,
and its streaming reader kept only so `benchmarks/input_pipeline.py` can compare the two.

  python -m input_pipeline.tfrecord_legacy --src=/data/latents_tfrecord --out=/data/latents

The converter re-reads every old shard (each TFRecord's CRC checked), writes the same record
payloads as flat shards (`input_pipeline.records`) of the same sizes under the same manifest
fields, and writes the manifest last; a rerun skips shards already converted, so an interrupted
conversion resumes. The old directory is never modified.
"""
import argparse
import json
import os
import sys
from typing import List, Sequence

import numpy as np

from input_pipeline import records

FORMAT = "mf_jax-latents-tfrecord-v1"


def _tf():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    tf.config.set_visible_devices([], "GPU")
  except (RuntimeError, ValueError):
    pass
  return tf


def read_manifest(path: str) -> dict:
  mpath = records.manifest_path(path)
  with open(mpath) as f:
    m = json.load(f)
  if m.get("format") != FORMAT:
    raise ValueError(f"{mpath!r}: format {m.get('format')!r}, expected the old {FORMAT!r}.")
  m["dir"] = os.path.dirname(os.path.abspath(mpath))
  m["layout"] = records.RecordLayout(tuple(m["latent_shape"]), m["dtype"])
  return m


def read_payloads(path: str, record_bytes: int, count: int) -> List[bytes]:
  """Every record of one TFRecord shard; errors name the file and the record."""
  tf = _tf()
  payloads = []
  try:
    for rec in tf.data.TFRecordDataset(path).as_numpy_iterator():
      if len(rec) != record_bytes:
        raise ValueError(f"TFRecord shard {path!r}: record {len(payloads)} has {len(rec)} bytes, "
                         f"expected {record_bytes}.")
      payloads.append(rec)
  except tf.errors.OpError as e:
    raise ValueError(f"TFRecord shard {path!r}: record {len(payloads)} is corrupt or truncated "
                     f"({type(e).__name__}).") from e
  if len(payloads) != count:
    raise ValueError(f"TFRecord shard {path!r}: {len(payloads)} records, manifest says {count}.")
  return payloads


def convert(src: str, out: str) -> dict:
  """Old TFRecord directory -> flat-record directory; returns the new manifest."""
  m = read_manifest(src)
  if os.path.abspath(out) == m["dir"]:
    raise ValueError("--out must differ from --src: the old shards stay untouched.")
  os.makedirs(out, exist_ok=True)
  split, num = m.get("split", "train"), len(m["shards"])
  shards = []
  for i, shard in enumerate(m["shards"]):
    path = os.path.join(out, records.shard_name(split, i, num))
    done = records.finished_shard(path)
    if done is None:
      payloads = read_payloads(os.path.join(m["dir"], shard["file"]),
                               m["layout"].record_bytes, shard["count"])
      done = records.write_shard(path, payloads, shard["first_index"])
    shards.append(done)
  keep = {k: v for k, v in m.items() if k not in ("dir", "layout", "shards", "format")}
  manifest = {**keep, "format": records.FORMAT, "converted_from": {"dir": m["dir"],
                                                                   "format": FORMAT},
              "shards": shards}
  records.atomic_write_json(os.path.join(out, records.MANIFEST), manifest)
  return manifest


def write_arrays(out: str, arrays, *, shard_size: int, dtype: str = "float32",
                 num_classes: int = 1000) -> None:
  """Old-format shards from arrays (as `records.write_arrays`), for the converter test and the
  benchmark."""
  tf = _tf()
  n = len(arrays["label"])
  arrays = {"index": np.arange(n), **arrays}
  layout = records.RecordLayout(tuple(arrays["mean"].shape[1:]), dtype)
  num = max(1, -(-n // shard_size))
  os.makedirs(out, exist_ok=True)
  shards = []
  for i in range(num):
    sl = slice(i * shard_size, min((i + 1) * shard_size, n))
    name = f"train-{i:05d}-of-{num:05d}.tfrecord"
    with tf.io.TFRecordWriter(os.path.join(out, name)) as w:
      for p in layout.encode(**{f: arrays[f][sl] for f in records.LATENT_FIELDS + records.INT_FIELDS}):
        w.write(p)
    shards.append({"file": name, "count": sl.stop - sl.start, "first_index": int(arrays["index"][sl][0]),
                   "bytes": os.path.getsize(os.path.join(out, name))})
  records.atomic_write_json(os.path.join(out, records.MANIFEST), {
      "format": FORMAT, "count": n, "num_classes": num_classes, "split": "train",
      **layout.to_json(), "shards": shards})


def make_dataset(path: str, *, batch_size: int, seed: int = 0, shuffle_buffer: int = 16384,
                 cycle_length: int = 8):
  """The old reader (one process): shuffled shards interleaved, a shuffle buffer, repeat, batch,
  parse with decode_raw. Yields numpy batches with x, x_std, x_flip, x_flip_std, label, index."""
  tf = _tf()
  m = read_manifest(path)
  layout = m["layout"]
  files = [os.path.join(m["dir"], s["file"]) for s in m["shards"] if s["count"]]
  offsets, item = layout.offsets(), np.dtype(layout.dtype).itemsize
  n = int(np.prod(layout.shape))
  tf_dtype = tf.float32 if layout.dtype == "float32" else tf.float16

  def parse(raw):
    b = tf.io.decode_raw(raw, tf.uint8)
    bsz = tf.shape(b)[0]

    def latent(field):
      chunk = b[:, offsets[field]:offsets[field] + n * item]
      vals = tf.bitcast(tf.reshape(chunk, [bsz, n, item]), tf_dtype)
      return tf.cast(tf.reshape(vals, [bsz, *layout.shape]), tf.float32)

    def int64(field):
      return tf.bitcast(tf.reshape(b[:, offsets[field]:offsets[field] + 8], [bsz, 8]), tf.int64)
    return {"x": latent("mean"), "x_std": latent("std"), "x_flip": latent("flip_mean"),
            "x_flip_std": latent("flip_std"), "label": tf.cast(int64("label"), tf.int32),
            "index": int64("index")}

  ds = tf.data.Dataset.from_tensor_slices(files).shuffle(len(files), seed=seed)
  ds = ds.interleave(lambda f: tf.data.TFRecordDataset(f, buffer_size=1 << 20),
                     cycle_length=min(cycle_length, len(files)), block_length=1,
                     num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.shuffle(shuffle_buffer, seed=seed + 1).repeat().batch(batch_size, drop_remainder=True)
  ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


def main(argv: Sequence[str]) -> int:
  p = argparse.ArgumentParser(description="Convert TFRecord latent shards to flat record shards.")
  p.add_argument("--src", required=True, help="directory of the old TFRecord shards + manifest")
  p.add_argument("--out", required=True, help="new directory for the flat shards")
  args = p.parse_args(argv)
  m = convert(args.src, args.out)
  print(json.dumps(records.verify(args.out) | {"converted_from": m["converted_from"]["dir"]}))
  return 0


if __name__ == "__main__":
  try:
    sys.exit(main(sys.argv[1:]))
  except (ValueError, FileNotFoundError) as e:
    print(f"tfrecord_legacy: error: {e}", file=sys.stderr)
    sys.exit(2)
