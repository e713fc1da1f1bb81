"""Runs a study: every (arm, seed) as an ordinary training run in its own workdir.

  python -m studies.run --study=studies/meanflow_table1.py --workdir=/tmp/study_table1
  python -m studies.run --study=... --workdir=DIR --print_commands   # one shell line per unfinished run
  python -m studies.run --study=... --workdir=DIR --collect_only     # tables and plot from what finished
  python -m studies.run --study=... --workdir=DIR --shard=0/2 & python -m studies.run ... --shard=1/2

Each run trains in DIR/<arm>/seed<N> through the trainer's own entry (mf_jax.train.
train_and_evaluate, after the checks main.py makes), logging to train.log there; it resumes from its
newest checkpoint and records run_info like any run. Runs execute in this process, one after the
other: on a small shared CPU machine importing TensorFlow and JAX costs more than a short run, so
they are paid once. A run is finished when its final metrics are in its metrics.jsonl; finished runs
are skipped, so an interrupted study resumes by running the same command again. Runs share a
persistent XLA compilation cache (DIR/.xla_cache unless JAX_COMPILATION_CACHE_DIR is set), so the
seeds of an arm compile once. After every run DIR/results.csv, DIR/results.md and
DIR/<headline>.png are rewritten. `--print_commands` gives the equivalent `main.py` command per run
(a cluster's job array); `--collect_only` later gathers whatever they finished.
"""
import argparse
import logging as std_logging
import os
import sys
import threading
import time

from studies import results, spec


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  return f"{h}h{rem // 60:02d}m{rem % 60:02d}s" if h else f"{rem // 60}m{rem % 60:02d}s"


def _log(message: str) -> None:
  print(f"[study {time.strftime('%H:%M:%S')}] {message}", flush=True)


class Progress:
  """Runs done of all, elapsed time, and time left from the mean duration of the runs done."""

  def __init__(self, total: int):
    self.total, self.start, self.durations = total, time.time(), []

  def line(self, running_fraction: float = 0.0) -> str:
    left = "?"
    if self.durations:
      per_run = sum(self.durations) / len(self.durations)
      queued = self.total - len(self.durations)
      left = _duration(max(0.0, per_run * (queued - running_fraction)))
    return (f"{len(self.durations)}/{self.total} done, elapsed {_duration(time.time() - self.start)}"
            f", ~{left} left")


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


def train_one(study: spec.Study, run: spec.Run) -> None:
  """One run through the trainer, with main.py's checks; its log lines go to WORKDIR/train.log."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  from mf_jax import config_checks, train  # pylint: disable=g-import-not-at-top
  config = spec.run_config(study, run)
  os.makedirs(run.workdir, exist_ok=True)
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
    config_checks.validate(config, run.workdir, "train")
    train.train_and_evaluate(config, run.workdir)
  except Exception:
    logger.exception("Run %s failed.", run.key)
    raise
  finally:
    sys.argv = argv
    logger.removeHandler(handler)
    logger.propagate = propagate
    handler.close()


def execute(study, workdir, arm_list, runs, todo, report_every: float) -> int:
  """Trains `todo` one after the other; returns the number of failed runs.

  A run that returns without its final metrics was stopped by a preemption notice (SIGTERM): it
  saved a checkpoint, and the study stops there too.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")  # tf.data must never take accelerator memory from JAX.
  _use_compilation_cache(workdir)
  progress, failed = Progress(len(todo)), 0
  for index, run in enumerate(todo, 1):
    resume = results.last_step(run)
    _log(f"[{index}/{len(todo)}] start {run.key}" + (f" (resuming after step {resume})"
                                                     if resume else "")
         + f"; log {os.path.join(run.workdir, results.LOG)}")
    start, stop_reporting = time.time(), threading.Event()

    def report(run=run, start=start, index=index):
      while not stop_reporting.wait(report_every):
        step = results.last_step(run)
        _log(f"[{index}/{len(todo)}] {run.key} step {step}/{run.arm.num_steps} "
             f"({_duration(time.time() - start)}); "
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
      failed += 1
      _log(f"[{index}/{len(todo)}] FAILED {run.key} after {_duration(wall)}: {error!r:.300}; "
           + progress.line())
    elif values is None:
      _log(f"[{index}/{len(todo)}] {run.key} stopped at step {results.last_step(run)} "
           "(preemption notice); stopping the study. Run the same command to resume.")
      results.write_all(study, workdir, arm_list, runs)
      raise SystemExit(3)
    else:
      shown = ", ".join(f"{m}={values[m]:.4f}" for m in study.metrics)
      _log(f"[{index}/{len(todo)}] done {run.key} in {_duration(wall)}: {shown}; "
           + progress.line())
    results.write_all(study, workdir, arm_list, runs)
  return failed


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--study", required=True, help="Study file defining get_study().")
  parser.add_argument("--workdir", required=True, help="Study folder: one sub-workdir per run.")
  parser.add_argument("--print_commands", action="store_true",
                      help="Print one shell command per unfinished run instead of running them.")
  parser.add_argument("--collect_only", action="store_true",
                      help="Only write results.csv / results.md / the plot from finished runs.")
  parser.add_argument("--shard", default="0/1",
                      help="i/n: run only the unfinished runs with index = i mod n (parallel runners).")
  parser.add_argument("--tables", default="",
                      help="Comma-separated table keys: only their arms (default: every table).")
  parser.add_argument("--report_every", type=float, default=60.0,
                      help="Seconds between progress lines while a run trains.")
  args = parser.parse_args(argv)
  shard, num_shards = (int(x) for x in args.shard.split("/"))
  if not 0 <= shard < num_shards:
    parser.error(f"--shard={args.shard}: want i/n with 0 <= i < n.")

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
    mine = todo[shard::num_shards]
    _log(f"{study.name}: {len(arm_list)} arms x {len(study.seeds)} seeds = {len(runs)} runs, "
         f"{len(runs) - len(todo)} already finished, {len(mine)} to run here"
         + (f" (shard {args.shard} of {len(todo)})" if num_shards > 1 else "") + ".")
    if mine:
      failed = execute(study, args.workdir, arm_list, runs, mine, args.report_every)
  table_rows = results.write_all(study, args.workdir, arm_list, runs)
  done = sum(r["status"] == "done" for r in table_rows)
  _log(f"{done}/{len(runs)} runs finished; wrote {os.path.join(args.workdir, 'results.md')}, "
       f"results.csv and {study.headline}.png." + (f" {failed} run(s) failed." if failed else ""))
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
