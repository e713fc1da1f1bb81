"""Training-loop hooks without TensorFlow: progress reports and a profiler window.

Drop-in for the two CLU periodic actions the trainer uses (clu.periodic_actions imports TensorFlow
through CLU's writers): hook(step) after every step, same constructor arguments.
"""
import time
from typing import Optional

from absl import logging
import jax


class ReportProgress:
  """Every `every_steps` steps: steps/s and uptime to the writer, progress and ETA to the log."""

  def __init__(self, *, num_train_steps: Optional[int] = None, writer=None, every_steps: int = 100):
    self._num_steps, self._writer, self._every = num_train_steps, writer, every_steps
    self._t0 = time.monotonic()
    self._last = None  # (step, time) of the previous report.

  def __call__(self, step: int):
    now = time.monotonic()
    if self._last is None:
      self._last = (step, now)  # The first step includes compilation: time from here.
      return
    if step % self._every:
      return
    steps_per_sec = (step - self._last[0]) / max(now - self._last[1], 1e-9)
    self._last = (step, now)
    if self._writer is not None:
      self._writer.write_scalars(step, {"steps_per_sec": steps_per_sec,
                                        "uptime": now - self._t0})
    if self._num_steps:
      eta_min = (self._num_steps - step) / max(steps_per_sec, 1e-9) / 60
      logging.info("Step %d/%d (%.1f%%), %.3g steps/s, ETA %.1f min.", step, self._num_steps,
                   100.0 * step / self._num_steps, steps_per_sec, eta_min)


class Profile:
  """Records a jax.profiler trace of steps [first_profile, first_profile + num_profile_steps)
  into `logdir` (TensorBoard's profile plugin reads it)."""

  def __init__(self, *, logdir: str, first_profile: int = 10, num_profile_steps: int = 5):
    self._logdir, self._first, self._num = logdir, first_profile, num_profile_steps
    self._active = False

  def __call__(self, step: int):
    if step == self._first and not self._active:
      jax.profiler.start_trace(self._logdir)
      self._active = True
    elif self._active and step >= self._first + self._num:
      jax.profiler.stop_trace()
      self._active = False
