"""What a study declares (Study, Table, Row) and what the runner derives from it (arms, runs).

A study file defines `get_study() -> Study`. Each table row is an arm: config overrides (dotted
field -> Python value) on top of the study's base config and base overrides, with the paper's
number for that arm. Rows of different tables with the same effective config (the baseline sits in
every table of an ablation) are one arm, trained once per seed and shown in every table.
"""
import dataclasses
import importlib.util
import os
import re
import shlex
import sys
from typing import Any, Dict, List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Row:
  label: str  # As shown in the table, e.g. "(v, 0, 1)".
  overrides: Dict[str, Any] = dataclasses.field(default_factory=dict)
  paper: Optional[float] = None  # The paper's number for this arm (Study.paper_metric).
  name: Optional[str] = None  # Folder name of the arm; default: made from the differing overrides.


@dataclasses.dataclass(frozen=True)
class Table:
  key: str  # e.g. "1a"
  title: str  # e.g. "ratio of r != t"
  rows: Sequence[Row]


@dataclasses.dataclass(frozen=True)
class Study:
  """A grid of arms x seeds.

  config: config file relative to the repository root (as main.py's --config takes it).
  overrides: applied to every run before the arm's own. metrics: keys of WORKDIR/metrics.jsonl
  read at the run's final step (train.num_steps); a run is finished when all are there. headline:
  the metric that is plotted and ranked. paper_metric: what the rows' `paper` numbers are.
  """
  name: str
  config: str
  tables: Sequence[Table]
  seeds: Sequence[int]
  metrics: Sequence[str]
  headline: str
  overrides: Dict[str, Any] = dataclasses.field(default_factory=dict)
  paper_metric: str = ""
  lower_is_better: bool = True
  description: str = ""
  # Collected and shown where a run wrote them, never required (e.g. 4-NFE scores that only some
  # arms evaluate).
  extra_metrics: Sequence[str] = ()

  @property
  def shown_metrics(self) -> tuple:
    return tuple(self.metrics) + tuple(m for m in self.extra_metrics if m not in self.metrics)


@dataclasses.dataclass
class Arm:
  name: str  # Folder name under the study workdir, derived from the overrides.
  overrides: Dict[str, Any]  # Only those that differ from the base (empty: the base itself).
  num_steps: int  # The resolved train.num_steps: where the final metrics must be.
  key: tuple = ()  # arm_key(): rows with this key are this arm.


@dataclasses.dataclass
class Run:
  arm: Arm
  seed: int
  workdir: str

  @property
  def key(self) -> str:
    return f"{self.arm.name}/seed{self.seed}"


def load_study(path: str) -> Study:
  spec = importlib.util.spec_from_file_location("_study_" + re.sub(r"\W", "_", path), path)
  if spec is None:
    raise FileNotFoundError(f"--study={path}: no such Python file.")
  module = importlib.util.module_from_spec(spec)
  if REPO not in sys.path:
    sys.path.insert(0, REPO)
  spec.loader.exec_module(module)
  study = module.get_study()
  if study.headline not in study.metrics:
    raise ValueError(f"Study {study.name}: headline={study.headline!r} is not one of metrics="
                     f"{list(study.metrics)}.")
  if not study.seeds or len(set(study.seeds)) != len(study.seeds):
    raise ValueError(f"Study {study.name}: seeds={list(study.seeds)} must be distinct, non-empty.")
  return study


def _config_path(study: Study) -> str:
  return os.path.join(REPO, study.config)


def base_config(study: Study):
  """The study's config file's get_config() with the study's base overrides applied."""
  if REPO not in sys.path:
    sys.path.insert(0, REPO)
  spec = importlib.util.spec_from_file_location("_study_config", _config_path(study))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for field, value in study.overrides.items():
    set_field(config, field, value, f"study {study.name}, base overrides")
  return config


def _normal(value):
  return list(value) if isinstance(value, (tuple, list)) else value


def get_field(config, field: str):
  node = config
  for part in field.split("."):
    node = node[part]
  return node


def set_field(config, field: str, value, where: str) -> None:
  """config.<field> = value, or a ValueError naming the field, where it came from and close names."""
  parts = field.split(".")
  node = config
  try:
    for part in parts[:-1]:
      node = node[part]
    if parts[-1] not in node:
      raise KeyError(field)
    setattr(node, parts[-1], value)
  except (KeyError, AttributeError, TypeError) as e:
    from mf_jax import config_checks  # pylint: disable=g-import-not-at-top
    hint = ""
    if isinstance(e, (KeyError, AttributeError)):
      hint = " " + config_checks.unknown_field_message(config, field)
    raise ValueError(f"{where}: cannot set config field {field}={value!r} ({e!r}).{hint}") from e


def _slug(overrides: Dict[str, Any]) -> str:
  if not overrides:
    return "base"
  parts = []
  for field, value in overrides.items():
    text = ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)
    parts.append(f"{field.split('.')[-1]}={text}")
  return re.sub(r"[^A-Za-z0-9._=+-]", "-", "__".join(parts).replace(",", "_"))


def arms(study: Study) -> List[Arm]:
  """Unique arms in table order; every override is checked against the config (names, types)."""
  base = base_config(study)
  found: Dict[tuple, Arm] = {}
  for table in study.tables:
    for row in table.rows:
      key = arm_key(study, row, base)
      if key in found:
        continue
      config = base.copy_and_resolve_references()
      for field, value in row.overrides.items():
        set_field(config, field, value, f"study {study.name}, table {table.key}, row {row.label!r}")
      differing = {field for field, _ in key}
      overrides = {f: v for f, v in row.overrides.items() if f in differing}
      found[key] = Arm(row.name or _slug(overrides), overrides, int(config.train.num_steps), key)
  names = [a.name for a in found.values()]
  if len(set(names)) != len(names):
    raise ValueError(f"Study {study.name}: two different arms map to one folder name: {names}.")
  return list(found.values())


def arm_key(study: Study, row: Row, base=None) -> tuple:
  """The overrides of a row that differ from the base config, as a hashable key."""
  base = base if base is not None else base_config(study)
  differing = []
  for field, value in row.overrides.items():
    try:
      same = _normal(get_field(base, field)) == _normal(value)
    except (KeyError, AttributeError):
      same = False  # Unknown field: set_field names it when the arm is built.
    if not same:
      differing.append((field, repr(_normal(value))))
  return tuple(sorted(differing))


def runs(study: Study, workdir: str, arm_list: Sequence[Arm]) -> List[Run]:
  """Seed-major: every arm's first seed before any second one, so a study cut short by time
  still has every arm."""
  return [Run(arm, seed, os.path.join(workdir, arm.name, f"seed{seed}"))
          for seed in study.seeds for arm in arm_list]


def select_tables(study: Study, keys: Optional[Sequence[str]]) -> Study:
  """The study restricted to the tables with these keys (None: all), e.g. to run part of a grid."""
  if not keys:
    return study
  unknown = set(keys) - {t.key for t in study.tables}
  if unknown:
    raise ValueError(f"--tables: {sorted(unknown)} not in study {study.name} (tables "
                     f"{[t.key for t in study.tables]}).")
  return dataclasses.replace(study, tables=[t for t in study.tables if t.key in keys])


def _flag_value(value) -> str:
  if isinstance(value, (tuple, list)):
    return "(" + ",".join(_flag_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return str(value)


def train_argv(study: Study, run: Run, python: str = sys.executable) -> List[str]:
  """main.py's argv for one run: the study's config file, base overrides, the arm's, the seed."""
  argv = [python, os.path.join(REPO, "main.py"), f"--config={_config_path(study)}",
          f"--workdir={os.path.abspath(run.workdir)}"]
  overrides = dict(study.overrides, **run.arm.overrides, seed=run.seed)
  argv += [f"--config.{field}={_flag_value(value)}" for field, value in overrides.items()]
  return argv


def shell_command(study: Study, run: Run, log_name: str) -> str:
  """One self-contained shell line: makes the workdir and appends the run's output to its log."""
  workdir = shlex.quote(os.path.abspath(run.workdir))
  return (f"mkdir -p {workdir} && {shlex.join(train_argv(study, run))} "
          f">> {workdir}/{log_name} 2>&1")


def run_config(study: Study, run: Run):
  """The full config of one run: base config, base overrides, the arm's overrides, the seed."""
  config = base_config(study)
  for field, value in dict(run.arm.overrides, seed=run.seed).items():
    set_field(config, field, value, f"study {study.name}, arm {run.arm.name}")
  return config
