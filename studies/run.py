"""Runs a study: every (arm, seed) as an ordinary training run in its own workdir.

  python -m studies.run --study=studies/meanflow_table1.py --workdir=/tmp/study_table1
  python -m studies.run --study=... --workdir=DIR --print_commands   # one shell line per unfinished run
  python -m studies.run --study=... --workdir=DIR --collect_only     # tables and plot from what finished
  python -m studies.run --study=... --workdir=DIR & python -m studies.run --study=... --workdir=DIR

Each run trains in DIR/<arm>/seed<N> through the trainer's own entry (mf_jax.train.
train_and_evaluate, after the checks main.py makes), logging to train.log there; it resumes from its
newest checkpoint and records run_info like any run. Runs execute in this process, one after the
other: on a small shared CPU machine importing TensorFlow and JAX costs more than a short run, so
they are paid once. A run is finished when its final metrics are in its metrics.jsonl; finished runs
are skipped, so an interrupted study resumes by running the same command again. Runs share a
persistent XLA compilation cache (DIR/.xla_cache unless JAX_COMPILATION_CACHE_DIR is set), so the
seeds of an arm compile once. After every run DIR/results.csv, DIR/results.md and
DIR/<headline>.png are rewritten. Several runners started on one study share its runs (a runner
holds a run's workdir lock, mf_jax/workdir_lock.py, while it trains), e.g. two on a 2-core machine.
`--print_commands` gives the equivalent `main.py` command per run (a cluster's job array);
`--collect_only` later gathers whatever they finished.
"""
import argparse
import json
import logging as std_logging
import os
import sys
import threading
import time

from mf_jax import workdir_lock
from studies import results, spec

RECORD = "study_run.json"  # The run's config file and overrides, written at its first start.


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  return f"{h}h{rem // 60:02d}m{rem % 60:02d}s" if h else f"{rem // 60}m{rem % 60:02d}s"


def _log(message: str) -> None:
  print(f"[study {time.strftime('%H:%M:%S')}] {message}", flush=True)


class Progress:
  """Runs finished of the study's `todo` (by any runner), elapsed time, and the time left: the mean
  duration of this runner's runs times the runs left, shared by the runners now holding locks."""

  def __init__(self, study: spec.Study, todo):
    self.study, self.todo, self.start, self.durations = study, todo, time.time(), []

  def line(self, running_fraction: float = 0.0) -> str:
    left_runs = [r for r in self.todo if results.final_metrics(r, self.study.metrics) is None]
    runners = max(1, sum(_lock_holder(r) is not None for r in left_runs))
    left = "?"
    if self.durations:
      per_run = sum(self.durations) / len(self.durations)
      left = _duration(max(0.0, per_run * (len(left_runs) - running_fraction) / runners))
    return (f"{len(self.todo) - len(left_runs)}/{len(self.todo)} done, elapsed "
            f"{_duration(time.time() - self.start)}, ~{left} left"
            + (f" ({runners} runners)" if runners > 1 else ""))


class _QuietLibraries(std_logging.Filter):
  """Drops INFO records of Orbax's per-save internals (as main.py does)."""

  def filter(self, record):
    return record.levelno > std_logging.INFO or "/orbax/" not in record.pathname


def _use_compilation_cache(workdir: str) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.abspath(workdir), ".xla_cache"))
  if not os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"):
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def _check_overrides(study: spec.Study, run: spec.Run) -> None:
  """Records the run's config (file and overrides) in WORKDIR/study_run.json at its first start,
  and refuses to resume a workdir recorded with another: an arm edited in the study file (or a
  Row.name reused) must not continue, or be collected as, a run of the old config."""
  record = json.loads(json.dumps({"config": study.config, "overrides": dict(
      study.overrides, **run.arm.overrides, seed=run.seed)}, sort_keys=True))
  path = os.path.join(run.workdir, RECORD)
  if os.path.isfile(path):
    with open(path) as f:
      old = json.load(f)
    if old != record:
      raise ValueError(f"{run.workdir} was started with {old}, but the study now gives {record}: "
                       "delete that workdir to retrain the arm, or restore the study file.")
  else:
    with open(path, "w") as f:
      json.dump(record, f, indent=1, sort_keys=True)


def train_one(study: spec.Study, run: spec.Run) -> None:
  """One run through the trainer, with main.py's checks; its log lines go to WORKDIR/train.log."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  from mf_jax import config_checks, train  # pylint: disable=g-import-not-at-top
  config = spec.run_config(study, run)
  os.makedirs(run.workdir, exist_ok=True)
  _check_overrides(study, run)
  handler = std_logging.FileHandler(os.path.join(run.workdir, results.LOG))
  handler.setFormatter(logging.PythonFormatter())
  handler.addFilter(_QuietLibraries())
  logger = logging.get_absl_logger()
  logger.addHandler(handler)
  propagate, logger.propagate = logger.propagate, False  # The console keeps the study's lines.
  logging.set_verbosity(logging.INFO)
  argv = sys.argv
  sys.argv = spec.train_argv(study, run)  # What run_info records: the equivalent main.py command.
  try:
    config_checks.validate(config, run.workdir, "train", hand_over=True)  # train.py: not again.
    train.train_and_evaluate(config, run.workdir)
  except Exception:
    logger.exception("Run %s failed.", run.key)
    raise
  finally:
    sys.argv = argv
    logger.removeHandler(handler)
    logger.propagate = propagate
    handler.close()


def _lock_holder(run: spec.Run):
  """Who trains `run` now (a live process holding its workdir lock), or None."""
  return workdir_lock.holder(run.workdir)


def claim(run: spec.Run) -> bool:
  """Takes the run's workdir lock (mf_jax.workdir_lock, the trainer's own) unless a live process
  holds it, so several runners started on one study share its runs instead of training one twice."""
  try:
    return workdir_lock.acquire(run.workdir) or True
  except workdir_lock.WorkdirBusy:
    return False


def release(run: spec.Run) -> None:
  workdir_lock.release(run.workdir)


def execute(study, workdir, arm_list, runs, todo, report_every: float) -> int:
  """Trains the runs of `todo` that no other runner holds, one after the other; returns the number
  of failed runs.

  A run that returns without its final metrics was stopped by a preemption notice (SIGTERM): it
  saved a checkpoint, and the study stops there too.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")  # tf.data must never take accelerator memory from JAX.
  _use_compilation_cache(workdir)
  progress, failed = Progress(study, todo), 0
  for index, run in enumerate(todo, 1):
    if results.final_metrics(run, study.metrics) is not None or not claim(run):
      continue  # Finished or being trained by another runner meanwhile.
    try:
      failed += _execute_one(study, run, f"[{index}/{len(todo)}]", progress, report_every)
    except SystemExit:
      results.write_all(study, workdir, arm_list, runs)
      raise
    finally:
      release(run)
    results.write_all(study, workdir, arm_list, runs)
  return failed


def _execute_one(study, run, tag: str, progress: Progress, report_every: float) -> int:
  """One run with progress lines; 1 if it failed, 0 if it finished; SystemExit if preempted."""
  resume = results.last_step(run)
  _log(f"{tag} start {run.key}" + (f" (resuming after step {resume})" if resume else "")
       + f"; log {os.path.join(run.workdir, results.LOG)}")
  start, stop_reporting = time.time(), threading.Event()

  def report():
    while not stop_reporting.wait(report_every):
      step = results.last_step(run)
      _log(f"{tag} {run.key} step {step}/{run.arm.num_steps} ({_duration(time.time() - start)}); "
           + progress.line(step / max(1, run.arm.num_steps)))

  reporter = threading.Thread(target=report, daemon=True)
  reporter.start()
  error = None
  try:
    train_one(study, run)
  except Exception as e:  # pylint: disable=broad-except
    error = e
  finally:
    stop_reporting.set()
    reporter.join()
  wall = time.time() - start
  values = results.final_metrics(run, study.metrics)
  results.record_attempt(run, wall_s=round(wall, 1), returncode=0 if error is None else 1,
                         error=None if error is None else repr(error)[:500],
                         finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
  progress.durations.append(wall)
  if error is not None:
    _log(f"{tag} FAILED {run.key} after {_duration(wall)}: {error!r:.300}; " + progress.line())
    return 1
  if values is None:
    _log(f"{tag} {run.key} stopped near step {results.last_step(run)} (preemption notice); "
         "stopping the study. Run the same command to resume.")
    raise SystemExit(3)
  shown = ", ".join(f"{m}={values[m]:.4f}" for m in study.metrics)
  _log(f"{tag} done {run.key} in {_duration(wall)}: {shown}; " + progress.line())
  return 0


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--study", required=True, help="Study file defining get_study().")
  parser.add_argument("--workdir", required=True, help="Study folder: one sub-workdir per run.")
  parser.add_argument("--print_commands", action="store_true",
                      help="Print one shell command per unfinished run instead of running them.")
  parser.add_argument("--collect_only", action="store_true",
                      help="Only write results.csv / results.md / the plot from finished runs.")
  parser.add_argument("--tables", default="",
                      help="Comma-separated table keys: only their arms (default: every table).")
  parser.add_argument("--report_every", type=float, default=60.0,
                      help="Seconds between progress lines while a run trains.")
  args = parser.parse_args(argv)
  if not os.path.isfile(args.study):
    raise FileNotFoundError(f"--study={args.study}: no such file. Fix: pass a study file that "
                            "defines get_study(), e.g. --study=studies/meanflow_table1.py.")

  study = spec.select_tables(spec.load_study(args.study),
                             [k for k in args.tables.split(",") if k])
  arm_list = spec.arms(study)
  runs = spec.runs(study, args.workdir, arm_list)
  todo = [r for r in runs if results.final_metrics(r, study.metrics) is None]
  if args.print_commands:
    for run in todo:
      print(spec.shell_command(study, run, results.LOG))
    return 0
  failed = 0
  if not args.collect_only:
    from mf_jax import config_checks  # pylint: disable=g-import-not-at-top
    for run in todo:  # Every field and cross-field rule, before the first run trains.
      config_checks.validate_static(spec.run_config(study, run))
    _log(f"{study.name}: {len(arm_list)} arms x {len(study.seeds)} seeds = {len(runs)} runs, "
         f"{len(runs) - len(todo)} already finished, {len(todo)} to run.")
    if todo:
      failed = execute(study, args.workdir, arm_list, runs, todo, args.report_every)
  table_rows = results.write_all(study, args.workdir, arm_list, runs)
  done = sum(r["status"] == "done" for r in table_rows)
  _log(f"{done}/{len(runs)} runs finished; wrote {os.path.join(args.workdir, 'results.md')}, "
       f"results.csv and {study.headline}.png." + (f" {failed} run(s) failed." if failed else ""))
  return 1 if failed else 0


if __name__ == "__main__":
  from mf_jax import cli  # pylint: disable=g-import-not-at-top
  with cli.user_errors("studies.run"):
    sys.exit(main())
