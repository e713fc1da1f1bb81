"""sha256 of files, read in blocks: weights, record shards and manifests are checked with it."""
import hashlib


def file_sha256(path: str, block_size: int = 1 << 22) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(block_size), b""):
      digest.update(block)
  return digest.hexdigest()
