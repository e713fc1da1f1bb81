"""Metric writers: CLU's TensorBoard/log writer plus a JSON-lines copy for scripts.

Only process 0 writes files; other processes just log. WORKDIR/metrics.jsonl holds one
{"step": N, "name": value, ...} object per write.
"""
import json
import os

import jax
import numpy as np
from absl import logging
from clu import metric_writers


def _recorded(path: str) -> set:
  """(step, names) of every row already in a metrics.jsonl (unreadable lines are skipped)."""
  out = set()
  if os.path.isfile(path):
    with open(path) as f:
      for line in f:
        try:
          row = json.loads(line)
          out.add((int(row["step"]), frozenset(k for k in row if k != "step")))
        except (ValueError, KeyError, TypeError):
          continue
  return out


class JsonlWriter(metric_writers.MetricWriter):
  """Appends every scalar write to a JSON-lines file; other kinds of summaries are ignored.

  A row whose step already has the same metric names in the file is not appended again (logged
  instead), so the file holds each step's metrics once: --mode=eval run twice on one checkpoint, or
  the steps a resumed run repeats after its last checkpoint.
  """

  def __init__(self, path: str):
    self._path = path
    self._recorded = _recorded(path)

  def write_scalars(self, step, scalars):
    row = {"step": int(step)}
    row.update({k: float(np.asarray(v)) for k, v in scalars.items()})
    key = (row["step"], frozenset(scalars))
    if key in self._recorded:
      logging.info("%s already holds %s at step %d; not appended again (now: %s).", self._path,
                   sorted(scalars), row["step"], {k: v for k, v in row.items() if k != "step"})
      return
    self._recorded.add(key)
    with open(self._path, "a") as f:
      f.write(json.dumps(row) + "\n")

  def write_summaries(self, step, values, metadata=None):
    pass

  def write_images(self, step, images):
    pass

  def write_videos(self, step, videos):
    pass

  def write_audios(self, step, audios, *, sample_rate):
    pass

  def write_texts(self, step, texts):
    pass

  def write_histograms(self, step, arrays, num_buckets=None):
    pass

  def write_hparams(self, hparams):
    pass

  def flush(self):
    pass

  def close(self):
    pass


def create_writer(workdir: str) -> metric_writers.MetricWriter:
  if jax.process_index() > 0:
    return metric_writers.create_default_writer(workdir, just_logging=True)
  return metric_writers.MultiWriter([
      metric_writers.create_default_writer(workdir, asynchronous=False),
      JsonlWriter(os.path.join(workdir, "metrics.jsonl")),
  ])
