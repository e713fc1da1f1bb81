"""Metric writers without TensorFlow: TensorBoard event files, a JSON-lines copy, and the log.

Only process 0 writes files; other processes just log. WORKDIR/metrics.jsonl holds one
{"step": N, "name": value, ...} object per write. Event files are written with the `tensorboard`
package's own protobufs and record writer (CLU's writers import TensorFlow, which a GPU host with
only jax[cuda] does not have, and which would claim GPU memory where it is installed).

Writers follow CLU's MetricWriter method names (write_scalars, write_images, write_hparams, flush,
close), so code written against CLU's writers runs unchanged.
"""
import io
import json
import os
import time
from typing import Any, Mapping, Sequence

from absl import logging
import jax
import numpy as np


class LoggingWriter:
  """Scalars and hyperparameters to the absl log."""

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    logging.info("[%d] %s", step, ", ".join(f"{k}={float(np.asarray(v)):.6g}"
                                            for k, v in sorted(scalars.items())))

  def write_images(self, step: int, images: Mapping[str, np.ndarray]):
    logging.info("[%d] images: %s", step, {k: np.shape(v) for k, v in images.items()})

  def write_hparams(self, hparams: Mapping[str, Any]):
    logging.info("Hyperparameters: %s", dict(hparams))

  def flush(self):
    pass

  def close(self):
    pass


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


class JsonlWriter(LoggingWriter):
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

  def write_images(self, step, images):
    pass

  def write_hparams(self, hparams):
    pass


def _png(image: np.ndarray) -> bytes:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = np.asarray(image)
  if image.dtype != np.uint8:  # Floats in [0, 1], as CLU's writers take them.
    image = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
  buf = io.BytesIO()
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format="PNG")
  return buf.getvalue()


class TensorBoardWriter(LoggingWriter):
  """Scalars and images as TensorBoard event files in `logdir` (events.out.tfevents.*)."""

  def __init__(self, logdir: str):
    # The tensorboard package falls back to its own TensorFlow stub when TF is absent.
    from tensorboard.summary.writer.event_file_writer import EventFileWriter  # pylint: disable=g-import-not-at-top
    from tensorboard.compat.proto import summary_pb2  # pylint: disable=g-import-not-at-top
    self._summary_pb2 = summary_pb2
    self._writer = EventFileWriter(logdir)

  def _add(self, step: int, values: Sequence[Any]):
    from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
    self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                           summary=self._summary_pb2.Summary(value=values)))

  def write_scalars(self, step, scalars):
    value = self._summary_pb2.Summary.Value
    self._add(step, [value(tag=k, simple_value=float(np.asarray(v))) for k, v in scalars.items()])

  def write_images(self, step, images):
    """images: name -> [N, H, W, C] (uint8, or floats in [0, 1]); one summary image per entry."""
    summary = self._summary_pb2.Summary
    values = []
    for name, batch in images.items():
      for i, image in enumerate(np.asarray(batch)):
        tag = name if len(batch) == 1 else f"{name}/{i}"
        values.append(summary.Value(tag=tag, image=summary.Image(
            height=image.shape[0], width=image.shape[1], colorspace=image.shape[2],
            encoded_image_string=_png(image))))
    self._add(step, values)

  def write_hparams(self, hparams):
    pass  # The full config is in WORKDIR's run records (run_info.py).

  def flush(self):
    self._writer.flush()

  def close(self):
    self._writer.close()


class MultiWriter:
  """Forwards every call to each writer in turn."""

  def __init__(self, writers):
    self._writers = list(writers)

  def __getattr__(self, name):
    def call(*args, **kwargs):
      for w in self._writers:
        getattr(w, name)(*args, **kwargs)
    return call


def create_writer(workdir: str) -> MultiWriter:
  if jax.process_index() > 0:
    return MultiWriter([LoggingWriter()])
  return MultiWriter([LoggingWriter(), TensorBoardWriter(workdir),
                      JsonlWriter(os.path.join(workdir, "metrics.jsonl"))])
