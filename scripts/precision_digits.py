"""bf16 recipe against float32 on the digits: FD per seed and training-MSE curves overlaid (the adaptive loss itself sits near 1).

  for seed in 0 1 2; do for dtype in float32 bfloat16; do
    python main.py --config=configs/default.py --workdir=DIR/${dtype}_s${seed} --config.seed=$seed \
      --config.train.num_steps=300 --config.optim.warmup_steps=50 --config.train.log_every=20 \
      --config.train.sample_every=0 --config.model.compute_dtype=$dtype
  done; done
  python scripts/precision_digits.py --runs=DIR --png=docs/precision_digits_loss.png

Reads each run's metrics.jsonl; prints per-arm FD (mean, sd over seeds, values) and whether the
arms' means differ by less than the larger seed spread; writes the loss curves to --png.
"""
import argparse
import glob
import json
import os
import statistics

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=wrong-import-position


def read(workdir):
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  loss = [(r["step"], r["mse"]) for r in rows if "mse" in r]  # The adaptive loss sits near 1.
  fd = [r for r in rows if "fd_pixels_1nfe" in r]
  return loss, (fd[-1]["fd_pixels_1nfe"] if fd else None), (fd[-1].get("fd_pixels_2nfe") if fd else None)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--runs", required=True)
  parser.add_argument("--png", required=True)
  args = parser.parse_args()
  arms = {}
  for path in sorted(glob.glob(os.path.join(args.runs, "*_s*"))):
    if os.path.isdir(path) and os.path.exists(os.path.join(path, "metrics.jsonl")):
      arm = os.path.basename(path).rsplit("_s", 1)[0]
      arms.setdefault(arm, []).append((os.path.basename(path), *read(path)))
  colors = {"float32": "tab:blue", "bfloat16": "tab:red"}
  fig, ax = plt.subplots(figsize=(6, 4))
  summary = {}
  for arm, runs in arms.items():
    for i, (name, loss, fd1, fd2) in enumerate(runs):
      ax.plot(*zip(*loss), color=colors.get(arm, None), alpha=0.7,
              label=arm if i == 0 else None, lw=1)
    fds = [r[2] for r in runs if r[2] is not None]
    fd2s = [r[3] for r in runs if r[3] is not None]
    summary[arm] = {"runs": [r[0] for r in runs], "fd_1nfe": fds, "fd_2nfe": fd2s,
                    "fd_1nfe_mean": statistics.mean(fds) if fds else None,
                    "fd_1nfe_sd": statistics.stdev(fds) if len(fds) > 1 else None}
  ax.set_xlabel("step")
  ax.set_ylabel("training MSE (u - u_tgt)")
  ax.set_title("MeanFlow on digits: bf16 vs float32, 3 seeds each")
  ax.legend()
  fig.tight_layout()
  os.makedirs(os.path.dirname(args.png) or ".", exist_ok=True)
  fig.savefig(args.png, dpi=100)
  if all(summary.get(a, {}).get("fd_1nfe_sd") is not None for a in ("float32", "bfloat16")):
    gap = abs(summary["float32"]["fd_1nfe_mean"] - summary["bfloat16"]["fd_1nfe_mean"])
    spread = max(summary["float32"]["fd_1nfe_sd"], summary["bfloat16"]["fd_1nfe_sd"])
    summary["mean_gap"], summary["seed_spread"] = gap, spread
    summary["within_seed_spread"] = gap <= spread
  print(json.dumps(summary, indent=1))


if __name__ == "__main__":
  main()
