"""Latent and pixel record formats: flat binary shards of fixed-size records, plus a manifest JSON.

Storage is `input_pipeline.flat_records` (why: its docstring): record i of a shard sits at a fixed
offset, so the sampler (`input_pipeline.sampler`) reads any example by its number, and each record
carries a checksum verified on every read. Shards written by the earlier TFRecord format convert
once with `python -m input_pipeline.tfrecord_legacy --src=OLD --out=NEW`.

Why raw records (and not tf.train.Example): the payload of each record is the little-endian
concatenation, in this order, of
  mean, std, flip_mean, flip_std   each `dtype` [h, w, c]  (posterior of the image / of its flip)
  label, index                     each int64
so that a batch of records is one numpy structured array whose fields are the batch's arrays.
The layout is written in the manifest ("fields", "record_bytes").
Pixel records (`prepare_imagenet --pixels`, format PIXEL_FORMAT) hold instead
  image                            uint8 [h, w, 3]  (the centre crop)
  label, index                     each int64
with "image_shape" in the manifest where latent records have "latent_shape".

Directory: `<split>-SSSSS-of-NNNNN.bin` shards, `manifest.json` (written last, when every shard
is complete), and one `<shard>.done.json` per finished shard (what resumption trusts).
"""
import dataclasses
import json
import os
import sys
from typing import Dict, List, Sequence

import numpy as np

from input_pipeline import flat_records
from mf_jax.checksum import file_sha256

FORMAT = "mf_jax-latents-flat-v2"
PIXEL_FORMAT = "mf_jax-pixels-flat-v1"
MANIFEST = "manifest.json"
LATENT_FIELDS = ("mean", "std", "flip_mean", "flip_std")
PIXEL_FIELDS = ("image",)
INT_FIELDS = ("label", "index")
DTYPES = ("float32", "float16")
PIXEL_DTYPE = "uint8"
# format -> (array fields, manifest key of their shape, allowed dtypes)
FORMATS = {FORMAT: (LATENT_FIELDS, "latent_shape", DTYPES),
           PIXEL_FORMAT: (PIXEL_FIELDS, "image_shape", (PIXEL_DTYPE,))}

if sys.byteorder != "little":  # flat_records views shards in host byte order
  raise RuntimeError("input_pipeline.records assumes a little-endian host.")


@dataclasses.dataclass(frozen=True)
class RecordLayout:
  """Binary layout of one record: the arrays (four latent ones, or the pixel image) of `shape` and
  `dtype`, then label and index."""
  shape: tuple
  dtype: str = "float32"
  arrays: tuple = LATENT_FIELDS

  def __post_init__(self):
    allowed = FORMATS[self.format][2]
    if self.dtype not in allowed:
      raise ValueError(f"record dtype {self.dtype!r}: expected one of {allowed}.")
    if len(self.shape) != 3 or min(self.shape) <= 0:
      raise ValueError(f"record shape {self.shape}: expected [height, width, channels].")

  @property
  def format(self) -> str:
    return PIXEL_FORMAT if tuple(self.arrays) == PIXEL_FIELDS else FORMAT

  @property
  def numpy_dtype(self) -> np.dtype:
    return np.dtype([(f, "<" + np.dtype(self.dtype).str[1:], tuple(self.shape))
                     for f in self.arrays] + [(f, "<i8") for f in INT_FIELDS])

  @property
  def record_bytes(self) -> int:
    return self.numpy_dtype.itemsize

  def offsets(self) -> Dict[str, int]:
    return {f: self.numpy_dtype.fields[f][1] for f in self.arrays + INT_FIELDS}

  def encode(self, **arrays) -> List[bytes]:
    """Arrays mean/std/flip_mean/flip_std (or image) [B, h, w, c], label/index [B] -> B payloads."""
    n = len(arrays["label"])
    rows = np.zeros(n, self.numpy_dtype)
    for f in self.arrays + INT_FIELDS:
      rows[f] = arrays[f]
    raw = rows.tobytes()
    r = self.record_bytes
    return [raw[i * r:(i + 1) * r] for i in range(n)]

  def decode(self, payloads: Sequence[bytes]) -> Dict[str, np.ndarray]:
    """Inverse of `encode` (verification and tests)."""
    rows = np.frombuffer(b"".join(payloads), self.numpy_dtype)
    return {f: np.array(rows[f]) for f in self.arrays + INT_FIELDS}

  def to_json(self) -> dict:
    return {FORMATS[self.format][1]: list(self.shape), "dtype": self.dtype,
            "record_bytes": self.record_bytes,
            "fields": [{"name": f, "dtype": self.dtype, "shape": list(self.shape)}
                       for f in self.arrays] + [{"name": f, "dtype": "int64", "shape": []}
                                                  for f in INT_FIELDS]}


def shard_name(split: str, i: int, n: int) -> str:
  return f"{split}-{i:05d}-of-{n:05d}.bin"


def atomic_write_json(path: str, obj) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def write_shard(path: str, payloads: Sequence[bytes], first_index: int) -> dict:
  """Write a complete shard under a temp name, then rename: a shard file exists only when whole.

  Returns the shard's manifest entry, also stored as `<path>.done.json`.
  """
  tmp = f"{path}.tmp-{os.getpid()}"
  flat_records.write(tmp, payloads, len(payloads[0]) if payloads else 0)
  os.replace(tmp, path)
  info = {"file": os.path.basename(path), "count": len(payloads), "first_index": first_index,
          "bytes": os.path.getsize(path), "sha256": file_sha256(path)}
  atomic_write_json(path + ".done.json", info)
  return info


def finished_shard(path: str):
  """The shard's entry if it was completely written by `write_shard` (and not altered since)."""
  done = path + ".done.json"
  if not (os.path.isfile(path) and os.path.isfile(done)):
    return None
  with open(done) as f:
    info = json.load(f)
  return info if os.path.getsize(path) == info.get("bytes") else None


def shard_intact(path: str) -> bool:
  """True if the shard is finished and its bytes still hash to the sha256 recorded when written."""
  info = finished_shard(path)
  return info is not None and file_sha256(path) == info.get("sha256")


def discard_shard(path: str) -> None:
  """Removes a damaged shard and its done marker, so the next preparation run rewrites it."""
  for name in (path + ".done.json", path):
    if os.path.exists(name):
      os.remove(name)


def manifest_path(path: str) -> str:
  """Manifest file for a data directory, a manifest path, or a glob pattern inside a data directory."""
  if os.path.isdir(path):
    path = os.path.join(path, MANIFEST)
  elif not path.endswith(".json"):
    path = os.path.join(os.path.dirname(path) or ".", MANIFEST)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Record manifest {path!r} not found: pass the --out directory of "
                            "input_pipeline.prepare_imagenet (a run that finished writes it last).")
  return path


def read_manifest(path: str) -> dict:
  """Load and sanity-check a manifest; adds 'dir' (absolute directory of the shards) and 'layout'."""
  mpath = manifest_path(path)
  try:
    with open(mpath) as f:
      m = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"Record manifest {mpath!r} is not valid JSON: {e}") from e
  if m.get("format") not in FORMATS:
    raise ValueError(f"Record manifest {mpath!r}: format {m.get('format')!r}, expected one of "
                     f"{sorted(FORMATS)}.")
  arrays, shape_key, _ = FORMATS[m["format"]]
  try:
    layout = RecordLayout(tuple(m[shape_key]), m["dtype"], arrays)
  except (KeyError, TypeError) as e:
    raise ValueError(f"Record manifest {mpath!r}: missing or bad {shape_key}/dtype ({e}).") from e
  if m.get("record_bytes") != layout.record_bytes:
    raise ValueError(f"Record manifest {mpath!r}: record_bytes {m.get('record_bytes')} disagrees "
                     f"with {shape_key} {m[shape_key]} and dtype {m['dtype']} "
                     f"({layout.record_bytes} bytes).")
  if sum(s["count"] for s in m["shards"]) != m["count"]:
    raise ValueError(f"Record manifest {mpath!r}: shard counts do not add up to count={m['count']}.")
  m["dir"] = os.path.dirname(os.path.abspath(mpath))
  m["layout"] = layout
  return m


def check_shard_header(m: dict, shard: dict) -> str:
  """Cheap pre-flight check of one shard against the manifest (size, record size); returns path."""
  path = os.path.join(m["dir"], shard["file"])
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Record shard {path!r} listed in the manifest is missing.")
  size, layout = os.path.getsize(path), m["layout"]
  stride = flat_records.stride(layout.record_bytes)
  if size != shard["bytes"]:
    raise ValueError(f"Record shard {path!r} has {size} bytes, the manifest says {shard['bytes']}: "
                     f"truncated or replaced (if truncated, record {min(size // stride, shard['count'])} "
                     "onwards is missing or incomplete). Rerun input_pipeline.prepare_imagenet with "
                     f"the same flags and --out={m['dir']}: it rewrites shards whose size does not match.")
  if size != shard["count"] * stride:
    raise ValueError(f"Record shard {path!r}: {size} bytes do not hold {shard['count']} records of "
                     f"the manifest's {FORMATS[layout.format][1]} {list(layout.shape)} and dtype {layout.dtype} "
                     f"({layout.record_bytes} bytes each): shard and manifest come from different runs.")
  return path


def open_records(m: dict) -> flat_records.ShardedRecords:
  """Every record of a read manifest, addressable by number 0..count-1 (shards in manifest order)."""
  paths = [check_shard_header(m, s) for s in m["shards"]]
  return flat_records.ShardedRecords(paths, [s["count"] for s in m["shards"]],
                                     m["layout"].numpy_dtype)


def read_shard(m: dict, shard: dict) -> Dict[str, np.ndarray]:
  """Every record of one shard decoded in numpy; errors name the file and the corrupt record."""
  path = check_shard_header(m, shard)
  rows = flat_records.ShardedRecords([path], [shard["count"]], m["layout"].numpy_dtype)
  got = rows.read(np.arange(shard["count"]))
  return {f: np.array(got[f]) for f in got.dtype.names}


def verify(path: str) -> dict:
  """Re-read every shard against the manifest (size, sha256, record count and length, indices).

  Raises ValueError listing every bad shard; returns a summary dict when all are good.
  """
  m = read_manifest(path)
  problems = []
  for shard in m["shards"]:
    try:
      p = check_shard_header(m, shard)
      digest = file_sha256(p)
      if digest != shard["sha256"]:
        raise ValueError(f"Record shard {p!r}: sha256 {digest} != manifest {shard['sha256']}.")
      rows = read_shard(m, shard)
      want = np.arange(shard["first_index"], shard["first_index"] + shard["count"])
      if not np.array_equal(rows["index"], want):
        raise ValueError(f"Record shard {p!r}: indices are not {want[0]}..{want[-1]} in order.")
      if rows["label"].size and not (0 <= rows["label"].min() and
                                     rows["label"].max() < m["num_classes"]):
        raise ValueError(f"Record shard {p!r}: labels outside [0, {m['num_classes']}).")
    except (ValueError, FileNotFoundError) as e:
      problems.append(str(e))
  if problems:
    raise ValueError(f"{len(problems)} of {len(m['shards'])} shards in {m['dir']!r} failed "
                     "verification:\n  " + "\n  ".join(problems) + "\nRewrite them: rerun "
                     "input_pipeline.prepare_imagenet with this --out, its original flags and "
                     "--repair.")
  return {"dir": m["dir"], "shards": len(m["shards"]), "count": m["count"], "ok": True}


def write_arrays(out: str, arrays: Dict[str, np.ndarray], *, shard_size: int, split: str = "train",
                 dtype: str = "float32", num_classes: int = 1000, **extra) -> dict:
  """Write ready-made arrays (mean/std/flip_mean/flip_std [N, h, w, c] of `dtype`, or a uint8
  image [N, h, w, 3] for pixel records; label [N]; index optional) as shards plus manifest.
  Used for synthetic data (benchmark, tests) and small conversions."""
  n = len(arrays["label"])
  arrays = dict(arrays)
  arrays.setdefault("index", np.arange(n))
  if "image" in arrays:
    layout = RecordLayout(tuple(arrays["image"].shape[1:]), PIXEL_DTYPE, PIXEL_FIELDS)
  else:
    layout = RecordLayout(tuple(arrays["mean"].shape[1:]), dtype)
  num_shards = max(1, -(-n // shard_size))
  os.makedirs(out, exist_ok=True)
  shards = []
  for i in range(num_shards):
    sl = slice(i * shard_size, min((i + 1) * shard_size, n))
    payloads = layout.encode(**{f: arrays[f][sl] for f in layout.arrays + INT_FIELDS})
    shards.append(write_shard(os.path.join(out, shard_name(split, i, num_shards)), payloads,
                              int(arrays["index"][sl][0]) if payloads else 0))
  manifest = {"format": layout.format, "count": n, "num_classes": num_classes, "split": split,
              **layout.to_json(), **extra, "shards": shards}
  atomic_write_json(os.path.join(out, MANIFEST), manifest)
  return manifest
