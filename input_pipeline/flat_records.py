"""Flat record shards: fixed-size binary records with a per-record checksum, read by index.

Why this format (and not ArrayRecord, Grain or TFRecord): every record type of the project (latent
moments, CIFAR images, pixel crops) has a fixed size, so record i of a shard starts at byte
i * stride and needs no index; a numpy memmap then copies any record out of the page cache with
no parser, no decompression and no package (about 27k latents of 64 KiB per CPU-second here,
against 10k for the TFRecord reader, benchmarks/RESULTS.md). TFRecord has no random access;
array_record (installed here as a TFDS dependency) has it, but stores records in chunks with
their own index and decodes each read through its own reader, and Grain (not installed) would add
a package and its sampler for what `input_pipeline.sampler` does in 100 lines.

Shard file: `count` rows of `stride` bytes, each row = the record payload (the little-endian bytes
of a numpy structured dtype, see `records.RecordLayout`), zero-padded to a multiple of 8 bytes,
then one little-endian uint64: the sum, modulo 2^64, of the padded payload read as uint64 words.
The sum changes whenever any single word changes (a flipped bit, a zeroed block), costs one
vectorised pass (~4x cheaper than zlib.crc32 here), and is checked on every read, so a corrupt
record is named (file and record) before it reaches a step. The shard's sha256, checked by
`records.verify`, stays the strong whole-file check.
"""
import os
from typing import List, Sequence

import numpy as np

WORD = 8


def stride(record_bytes: int) -> int:
  """Bytes per row of a shard: payload padded to whole words, plus the uint64 checksum."""
  return -(-record_bytes // WORD) * WORD + WORD


def encode_rows(payloads: Sequence[bytes], record_bytes: int) -> np.ndarray:
  """Record payloads -> uint8 [n, stride] rows (padded payload, then its word sum)."""
  n, s = len(payloads), stride(record_bytes)
  rows = np.zeros((n, s), np.uint8)
  for i, p in enumerate(payloads):
    if len(p) != record_bytes:
      raise ValueError(f"record {i} has {len(p)} bytes, the layout needs {record_bytes}.")
    rows[i, :record_bytes] = np.frombuffer(p, np.uint8)
  rows[:, s - WORD:] = word_sums(rows).view(np.uint8).reshape(n, WORD)
  return rows


def word_sums(rows: np.ndarray) -> np.ndarray:
  """uint8 [n, stride] rows -> uint64 [n] sums of the padded payload words (mod 2^64)."""
  words = rows[:, :-WORD].view("<u8")
  return np.add.reduce(words, axis=1, dtype=np.uint64)


def stored_sums(rows: np.ndarray) -> np.ndarray:
  return rows[:, -WORD:].copy().view("<u8")[:, 0]


def write(path: str, payloads: Sequence[bytes], record_bytes: int) -> None:
  """Writes a whole shard to `path` and fsyncs it (the caller renames it into place)."""
  with open(path, "wb") as f:
    encode_rows(payloads, record_bytes).tofile(f)
    f.flush()
    os.fsync(f.fileno())


def check_size(path: str, count: int, record_bytes: int) -> None:
  """Raises ValueError naming the file and the first incomplete record if the size is wrong."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Record shard {path!r} listed in the manifest is missing.")
  size, s = os.path.getsize(path), stride(record_bytes)
  if size != count * s:
    first_bad = min(size // s, count)
    raise ValueError(
        f"Record shard {path!r} is truncated or of another layout: {size} bytes, but {count} "
        f"records of {record_bytes} bytes ({s} stored) need {count * s}; record {first_bad} "
        f"onwards is {'missing or incomplete' if size < count * s else 'extra'}. Rerun the "
        "preparation with the same flags and --out: it rewrites shards whose size is wrong.")


def open_shard(path: str, count: int, record_bytes: int) -> np.ndarray:
  """Size-checked read-only view uint8 [count, stride] of a shard (empty shards: no mapping)."""
  check_size(path, count, record_bytes)
  if count == 0:
    return np.zeros((0, stride(record_bytes)), np.uint8)
  return np.memmap(path, np.uint8, mode="r", shape=(count, stride(record_bytes)))


def check_rows(path: str, rows: np.ndarray, offsets: np.ndarray) -> None:
  """Raises ValueError naming the file and record of the first row whose checksum fails."""
  bad = np.flatnonzero(word_sums(rows) != stored_sums(rows))
  if bad.size:
    raise ValueError(f"Record shard {path!r}: record {int(offsets[bad[0]])} is corrupt (checksum "
                     f"mismatch; {bad.size} of the {len(rows)} records just read). Run the "
                     "preparation's --verify, then rerun it with --repair to rewrite the shard.")


class ShardedRecords:
  """Records 0..count-1 of a list of shards (in order), read by global record number.

  `read(numbers)` returns the records [k] in the order asked as a structured array of `dtype`
  (the layout's numpy dtype), every record checksum-verified.
  """

  def __init__(self, paths: Sequence[str], counts: Sequence[int], dtype: np.dtype):
    self.paths = list(paths)
    self.record_bytes = record_bytes = dtype.itemsize
    # The same fields at the same offsets, with the padding and checksum as unnamed trailing bytes.
    self.row_dtype = np.dtype({"names": list(dtype.names),
                               "formats": [dtype.fields[f][0] for f in dtype.names],
                               "offsets": [dtype.fields[f][1] for f in dtype.names],
                               "itemsize": stride(record_bytes)})
    self.shards: List[np.ndarray] = [open_shard(p, c, record_bytes) for p, c in zip(paths, counts)]
    self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

  def __len__(self) -> int:
    return int(self.starts[-1])

  def read(self, numbers: np.ndarray) -> np.ndarray:
    numbers = np.asarray(numbers, np.int64)
    if numbers.size and (numbers.min() < 0 or numbers.max() >= len(self)):
      raise IndexError(f"record numbers outside [0, {len(self)}).")
    out = np.empty((numbers.size, stride(self.record_bytes)), np.uint8)
    shard = np.searchsorted(self.starts, numbers, side="right") - 1
    offsets = numbers - self.starts[shard]
    # One copy per record: examples of a batch mostly sit in different shards (1250 of them on
    # ImageNet), where grouping by shard would cost more Python than it saves.
    for i, (s, o) in enumerate(zip(shard.tolist(), offsets.tolist())):
      out[i] = self.shards[s][o]
    bad = np.flatnonzero(word_sums(out) != stored_sums(out))
    if bad.size:
      s = shard[bad[0]]
      check_rows(self.paths[s], out[bad[:1]], offsets[bad[:1]])
    return out.reshape(-1).view(self.row_dtype)
