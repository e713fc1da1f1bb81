"""Metric writers: CLU's TensorBoard/log writer plus a JSON-lines copy for scripts.

Only process 0 writes files; other processes just log. WORKDIR/metrics.jsonl holds one
{"step": N, "name": value, ...} object per write.
"""
import json
import os

import jax
import numpy as np
from clu import metric_writers


class JsonlWriter(metric_writers.MetricWriter):
  """Appends every scalar write to a JSON-lines file; other kinds of summaries are ignored."""

  def __init__(self, path: str):
    self._path = path

  def write_scalars(self, step, scalars):
    row = {"step": int(step)}
    row.update({k: float(np.asarray(v)) for k, v in scalars.items()})
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
