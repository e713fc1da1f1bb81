"""studies/run.py on a two-arm, two-seed study of a few steps: runs, skips, resumes, prints, collects.

The arms differ in train.num_steps (4 and 6), which leaves the compiled programs identical (the
runs share one compilation) while making "finished" mean "metrics at *this arm's* last step": the
6-step arm also evaluates at step 4 (eval.every_steps=4), and that must not count as finished.
"""
import csv
import json
import os
import shutil
import subprocess
import textwrap

import pytest

from studies import results, run as study_run, spec

STUDY = textwrap.dedent("""
    from studies.spec import Row, Study, Table

    def get_study():
      return Study(
          name="two_arms", config="configs/tiny.py",
          overrides={"model.name": "mlp", "model.mlp_widths": (16, 16), "train.num_steps": 4,
                     "train.checkpoint_every": 2, "eval.every_steps": 4},
          tables=[Table("A", "training length", [Row("4 steps", {"train.num_steps": 4}, 2.0),
                                                 Row("6 steps", {"train.num_steps": 6}, 1.0)]),
                  Table("B", "the baseline again", [Row("base", {}, 2.0)])],
          seeds=(0, 1), metrics=("fd_pixels_1nfe", "fd_pixels_2nfe"), headline="fd_pixels_1nfe",
          paper_metric="made-up numbers")
""")


def _csv(workdir):
  with open(os.path.join(workdir, "results.csv")) as f:
    return {(r["arm"], int(r["seed"])): r for r in csv.DictReader(f)}


def _attempts(workdir, arm, seed):
  path = os.path.join(workdir, arm, f"seed{seed}", results.ATTEMPTS)
  return open(path).read().count("\n") if os.path.exists(path) else 0


def _trim_to_step(run_dir, step):
  """Makes a finished run look killed just after its checkpoint at `step`: later checkpoints and
  metrics rows are removed."""
  ckpt_dir = os.path.join(run_dir, "checkpoints")
  for name in os.listdir(ckpt_dir):
    if name.isdigit() and int(name) > step:
      shutil.rmtree(os.path.join(ckpt_dir, name))
  path = os.path.join(run_dir, "metrics.jsonl")
  with open(path) as f:
    kept = [line for line in f if json.loads(line)["step"] <= step]
  with open(path, "w") as f:
    f.writelines(kept)


def study_run_of(study_file, workdir, run_dir):
  study = spec.load_study(study_file)
  return next(r for r in spec.runs(study, workdir, spec.arms(study)) if r.workdir == run_dir)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  folder = tmp_path_factory.mktemp("study")
  study_file = folder / "two_arms.py"
  study_file.write_text(STUDY)
  return str(study_file), str(folder / "work")


def test_runs_skips_resumes_prints_and_collects(study, capsys):
  study_file, workdir = study
  argv = [f"--study={study_file}", f"--workdir={workdir}", "--report_every=1000"]
  assert study_run.main(argv) == 0

  # Two arms (the base appears in both tables but trains once) x two seeds, all finished.
  rows = _csv(workdir)
  assert set(rows) == {("base", 0), ("base", 1), ("num_steps=6", 0), ("num_steps=6", 1)}
  assert all(r["status"] == "done" for r in rows.values())
  first = {k: float(r["fd_pixels_1nfe"]) for k, r in rows.items()}
  assert first[("base", 0)] != first[("base", 1)]  # The seed reached the run.
  for arm, seed in rows:
    run_dir = os.path.join(workdir, arm, f"seed{seed}")
    assert os.listdir(os.path.join(run_dir, "run_info"))
    assert _attempts(workdir, arm, seed) == 1
  with open(os.path.join(workdir, "num_steps=6", "seed0", "metrics.jsonl")) as f:
    eval_steps = [json.loads(l)["step"] for l in f if "fd_pixels_1nfe" in l]
  assert eval_steps == [4, 6]  # An evaluation before the last step existed and was not taken.

  table = open(os.path.join(workdir, "results.md")).read()
  base_line = [l for l in table.splitlines() if l.startswith("| 4 steps |")]
  assert len(base_line) == 1 and "| 2 |" in base_line[0] and "2/2" in base_line[0]
  assert "## A: training length" in table and "## B: the baseline again" in table
  base_again = [l for l in table.splitlines() if l.startswith("| base |")][0]
  assert base_again.split("|")[3:5] == base_line[0].split("|")[3:5]  # Same arm, same cells.
  with open(os.path.join(workdir, "fd_pixels_1nfe.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"

  # A rerun trains nothing.
  capsys.readouterr()
  assert study_run.main(argv) == 0
  assert "0 to run." in capsys.readouterr().out
  assert all(_attempts(workdir, arm, seed) == 1 for arm, seed in rows)

  # A run killed after its step-4 checkpoint resumes from it and ends where it would have.
  killed = os.path.join(workdir, "num_steps=6", "seed1")
  _trim_to_step(killed, 4)
  assert _csv(workdir)[("num_steps=6", 1)]["status"] == "done"  # Not re-collected yet...
  assert study_run.main(argv + ["--collect_only"]) == 0
  assert _csv(workdir)[("num_steps=6", 1)]["status"] == "partial"  # ...now it is.
  assert study_run.main(argv) == 0
  assert "Resumed from the checkpoint at step 4" in open(os.path.join(killed, "train.log")).read()
  assert _attempts(workdir, "num_steps=6", 1) == 2
  resumed = _csv(workdir)[("num_steps=6", 1)]
  # Resuming is exact (tests/test_exact_resume.py), so the evaluation sees the same parameters.
  assert float(resumed["fd_pixels_1nfe"]) == pytest.approx(first[("num_steps=6", 1)], rel=1e-6)

  # --print_commands: one line per unfinished run; executed by a shell, the runner collects it.
  shutil.rmtree(os.path.join(workdir, "base", "seed1"))
  capsys.readouterr()
  assert study_run.main(argv + ["--print_commands"]) == 0
  commands = capsys.readouterr().out.strip().splitlines()
  assert len(commands) == 1 and "--config.seed=1" in commands[0]
  subprocess.run(commands[0], shell=True, check=True, cwd="/", timeout=600)
  assert study_run.main(argv + ["--collect_only"]) == 0
  collected = _csv(workdir)
  assert all(r["status"] == "done" for r in collected.values())
  # The printed command is the same training as the in-process run it replaced.
  assert float(collected[("base", 1)]["fd_pixels_1nfe"]) == pytest.approx(first[("base", 1)],
                                                                         rel=1e-6)

  # A study edited under an unfinished run (same arm folder, other base overrides) does not
  # resume it with the new config.
  _trim_to_step(killed, 4)
  edited = os.path.join(os.path.dirname(study_file), "edited.py")
  with open(edited, "w") as f:
    f.write(STUDY.replace('"eval.every_steps": 4', '"eval.every_steps": 2'))
  assert study_run.main([f"--study={edited}", f"--workdir={workdir}", "--report_every=1000"]) == 1
  assert "was started with" in results.attempts(study_run_of(edited, workdir, killed))[-1]["error"]
  assert results.last_step(study_run_of(edited, workdir, killed)) == 4  # Nothing trained.


def test_bad_override_is_named_before_any_run(tmp_path):
  study_file = tmp_path / "bad.py"
  study_file.write_text(STUDY.replace('"train.num_steps": 6', '"train.num_stepz": 6'))
  with pytest.raises(ValueError, match=r"table A, row '6 steps'.*train has no field 'num_stepz'"):
    spec.arms(spec.load_study(str(study_file)))
