"""Gathers a study's finished runs into results.csv, results.md and a PNG of the headline metric.

Everything here reads files only (WORKDIR/metrics.jsonl of each run, the runner's attempt records),
so it works the same on runs started by the runner and on runs started from --print_commands.
"""
import csv
import json
import math
import os
from typing import Dict, List, Optional, Sequence

from studies import spec

ATTEMPTS = "study_attempts.jsonl"  # One {"wall_s", "returncode", ...} per runner attempt.
LOG = "train.log"


def final_metrics(run: spec.Run, metrics: Sequence[str],
                  extra: Sequence[str] = ()) -> Optional[Dict[str, float]]:
  """The metrics (and whichever `extra` ones exist) at the run's final step, or None while any
  of `metrics` is missing."""
  path = os.path.join(run.workdir, "metrics.jsonl")
  if not os.path.isfile(path):
    return None
  values = {}
  with open(path) as f:
    for line in f:
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        continue  # A line cut short by a kill.
      if row.get("step") == run.arm.num_steps:
        values.update({k: v for k, v in row.items() if k in metrics or k in extra})
  return values if all(m in values for m in metrics) else None


def last_step(run: spec.Run) -> int:
  """The newest step in the run's metrics.jsonl (0 when none): how far a running run is."""
  path = os.path.join(run.workdir, "metrics.jsonl")
  step = 0
  if os.path.isfile(path):
    with open(path) as f:
      for line in f:
        try:
          step = max(step, int(json.loads(line).get("step", 0)))
        except (json.JSONDecodeError, ValueError, TypeError):
          pass
  return step


def attempts(run: spec.Run) -> List[dict]:
  path = os.path.join(run.workdir, ATTEMPTS)
  if not os.path.isfile(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def record_attempt(run: spec.Run, **fields) -> None:
  with open(os.path.join(run.workdir, ATTEMPTS), "a") as f:
    f.write(json.dumps(fields) + "\n")


def status(run: spec.Run, metrics: Sequence[str]) -> str:
  if final_metrics(run, metrics) is not None:
    return "done"
  tries = attempts(run)
  if tries and tries[-1].get("returncode") not in (0, None):
    return "failed"
  return "partial" if os.path.isdir(run.workdir) else "not started"


def rows(study: spec.Study, runs: Sequence[spec.Run]) -> List[dict]:
  """One dict per run: arm, seed, status, the metrics (None when missing), wall time, workdir."""
  out = []
  for run in runs:
    values = final_metrics(run, study.metrics, study.extra_metrics) or {}
    tries = attempts(run)
    wall = sum(t.get("wall_s", 0.0) for t in tries) if tries else None
    row = {"arm": run.arm.name, "seed": run.seed, "status": status(run, study.metrics)}
    row.update({m: values.get(m) for m in study.shown_metrics})
    row.update({"wall_s": None if wall is None else round(wall, 1), "workdir": run.workdir})
    out.append(row)
  return out


def write_csv(path: str, study: spec.Study, table_rows: List[dict]) -> None:
  fields = ["arm", "seed", "status", *study.shown_metrics, "wall_s", "workdir"]
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(table_rows)


def summary(values: Sequence[float]) -> dict:
  """mean, sample standard deviation (0 for one value), n, min, max of the finite values."""
  vals = [v for v in values if v is not None and math.isfinite(v)]
  n = len(vals)
  if not n:
    return {"n": 0}
  mean = sum(vals) / n
  sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else 0.0
  return {"n": n, "mean": mean, "sd": sd, "min": min(vals), "max": max(vals)}


def _fmt(s: dict) -> str:
  if not s.get("n"):
    return "-"
  return f"{s['mean']:.3f} ± {s['sd']:.3f}"


def _ranks(values: List[Optional[float]], lower_is_better: bool) -> List[str]:
  known = sorted((v if lower_is_better else -v, i) for i, v in enumerate(values) if v is not None)
  ranks = {i: r + 1 for r, (_, i) in enumerate(known)}
  return [str(ranks[i]) if i in ranks else "-" for i in range(len(values))]


def arm_summaries(study: spec.Study, arm_list, table_rows) -> Dict[str, Dict[str, dict]]:
  """{arm name: {metric: summary over seeds}}."""
  return {arm.name: {m: summary([r[m] for r in table_rows if r["arm"] == arm.name])
                     for m in study.shown_metrics} for arm in arm_list}


def write_markdown(path: str, study: spec.Study, arm_list, table_rows, plot_name: str) -> None:
  by_key = {arm.key: arm for arm in arm_list}
  stats = arm_summaries(study, arm_list, table_rows)
  base = spec.base_config(study)
  done = sum(r["status"] == "done" for r in table_rows)
  lines = [f"# {study.name}", "", study.description.strip(), "",
           f"{done} of {len(table_rows)} runs finished ({len(arm_list)} arms x "
           f"{len(study.seeds)} seeds {list(study.seeds)}). Cells: mean ± sample standard deviation "
           f"over the finished seeds (n). Rank: by the mean of `{study.headline}` within the table "
           f"(ours) and by the paper's number ({'lower' if study.lower_is_better else 'higher'} "
           f"is better). Paper: {study.paper_metric}.", ""]
  for table in study.tables:
    lines += [f"## {table.key}: {table.title}", "",
              "| arm | paper | " + " | ".join(f"`{m}`" for m in study.shown_metrics)
              + " | n | rank ours / paper |",
              "|---|---|" + "---|" * len(study.shown_metrics) + "---|---|"]
    arms_here = [by_key[spec.arm_key(study, row, base)] for row in table.rows]
    ours = _ranks([stats[a.name][study.headline].get("mean") for a in arms_here],
                  study.lower_is_better)
    paper = _ranks([row.paper for row in table.rows], study.lower_is_better)
    for row, arm, r_ours, r_paper in zip(table.rows, arms_here, ours, paper):
      cells = [_fmt(stats[arm.name][m]) for m in study.shown_metrics]
      n = stats[arm.name][study.headline].get("n", 0)
      lines.append(f"| {row.label} | {'-' if row.paper is None else f'{row.paper:g}'} | "
                   + " | ".join(cells) + f" | {n}/{len(study.seeds)} | {r_ours} / {r_paper} |")
    lines.append("")
  missing = [f"{r['arm']}/seed{r['seed']} ({r['status']})" for r in table_rows
             if r["status"] != "done"]
  lines += ["Missing runs: " + (", ".join(missing) if missing else "none") + ".", "",
            f"![{study.headline} per arm]({plot_name})", ""]
  with open(path, "w") as f:
    f.write("\n".join(lines))


def write_plot(path: str, study: spec.Study, arm_list, table_rows) -> None:
  """One panel per table: every seed (dots), mean ± sd (bar) of the headline; paper on the right axis."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  by_key = {arm.key: arm for arm in arm_list}
  base = spec.base_config(study)
  cols = min(3, len(study.tables))
  nrows = -(-len(study.tables) // cols)
  fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.4 * nrows), squeeze=False)
  for ax, table in zip(axes.flat, study.tables):
    xs = range(len(table.rows))
    for x, row in zip(xs, table.rows):
      arm = by_key[spec.arm_key(study, row, base)]
      vals = [r[study.headline] for r in table_rows
              if r["arm"] == arm.name and r[study.headline] is not None]
      ax.plot([x] * len(vals), vals, ".", color="tab:blue", alpha=0.5)
      s = summary(vals)
      if s["n"]:
        ax.errorbar([x], [s["mean"]], yerr=[s["sd"]], fmt="o", color="tab:blue", capsize=3)
    papers = [row.paper for row in table.rows]
    if any(p is not None for p in papers):
      twin = ax.twinx()
      twin.plot([x for x, p in zip(xs, papers) if p is not None], [p for p in papers if p is not None],
                "x", color="tab:red")
      twin.tick_params(axis="y", colors="tab:red", labelsize=7)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([row.label for row in table.rows], rotation=30, ha="right", fontsize=7)
    ax.set_title(f"{table.key}: {table.title}", fontsize=9)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlim(-0.5, len(table.rows) - 0.5)
  for ax in list(axes.flat)[len(study.tables):]:
    ax.axis("off")
  fig.suptitle(f"{study.name}: {study.headline} (blue: seeds and mean ± sd; red x: paper, "
               f"right axis)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


def write_all(study: spec.Study, workdir: str, arm_list, runs) -> List[dict]:
  """results.csv, results.md and <headline>.png in the study workdir; returns the CSV rows."""
  table_rows = rows(study, runs)
  os.makedirs(workdir, exist_ok=True)
  plot_name = f"{study.headline}.png"
  # Written beside and renamed, so a reader (or a second runner) never sees half a file.
  for name, write in (("results.csv", lambda p: write_csv(p, study, table_rows)),
                      ("results.md", lambda p: write_markdown(p, study, arm_list, table_rows,
                                                              plot_name)),
                      (plot_name, lambda p: write_plot(p, study, arm_list, table_rows))):
    path = os.path.join(workdir, name)
    partial = f"{path}.{os.getpid()}.tmp{os.path.splitext(name)[1]}"
    write(partial)
    os.replace(partial, path)
  return table_rows
