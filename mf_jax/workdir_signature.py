"""What a workdir was trained with: the shapes (and dtypes) of its training state and the fields
that set them.

Written once, by the first training start, to WORKDIR/state_signature.json. Every later start
(training, sampling, evaluation) compares the config's state shapes with it before touching the
workdir, so a changed width or a forgotten override stops with the differing fields named instead
of failing to restore every checkpoint. Shapes decide; the fields only explain (a variant spelt as
explicit depth/width with the same shapes is accepted).
"""
import json
import os

import jax

from mf_jax import config_schema
from mf_jax.errors import ConfigError

FILE = "state_signature.json"
# Config fields that can change the state's shapes (named in the error when shapes differ): the
# fields declared with shape=True (mf_jax/config_schema.py).
SHAPE_FIELDS = config_schema.SHAPE_FIELDS


def _get(config, name):
  for part in name.split("."):
    if part not in config:
      return None
    config = config[part]
  return list(config) if isinstance(config, tuple) else config


def compute(config) -> dict:
  """{"fields": {name: value}, "shapes": {leaf path: "dtype[shape]"}} of the initial state."""
  from mf_jax import train_state as ts  # pylint: disable=g-import-not-at-top
  model, optimizer = ts.build_model(config), ts.make_optimizer(config)
  abstract = jax.eval_shape(lambda k: ts.init_state(config, model, optimizer, k), jax.random.key(0))
  leaves = jax.tree_util.tree_flatten_with_path(abstract)[0]
  shapes = {jax.tree_util.keystr(path): f"{x.dtype}{list(x.shape)}" for path, x in leaves}
  return {"fields": {name: _get(config, name) for name in SHAPE_FIELDS}, "shapes": shapes}


def path(workdir: str) -> str:
  return os.path.join(workdir, FILE)


def check(config, workdir: str) -> None:
  """Raises ValueError naming the differing fields when the workdir was trained with other shapes."""
  from mf_jax.checkpointing import read_json  # pylint: disable=g-import-not-at-top
  recorded = read_json(path(workdir), f"move it away (e.g. mv {path(workdir)} {path(workdir)}.bad); "
                       "the next training start writes it again from the config.")
  if recorded is None:
    return
  current = compute(config)
  old, new = recorded.get("shapes", {}), current["shapes"]
  if old == new:
    return
  fields = [f"{name}: workdir {recorded['fields'].get(name)!r}, this config {value!r}"
            for name, value in current["fields"].items() if recorded["fields"].get(name) != value]
  differ = sorted((not k.startswith(".params"), k) for k in set(old) | set(new)
                  if old.get(k) != new.get(k))  # Parameters first, then optimizer and EMA copies.
  leaves = [f"{k}: {old.get(k, 'absent')} vs {new.get(k, 'absent')}" for _, k in differ]
  overrides = " ".join(f"--config.{name}={recorded['fields'][name]}"
                       for name, value in current["fields"].items()
                       if recorded["fields"].get(name) != value and name != "ema_decays")
  raise ConfigError(
      f"--workdir={workdir} holds a run whose parameter shapes differ from this config's; nothing "
      f"was changed. Differing fields: {'; '.join(fields) or 'none of ' + str(SHAPE_FIELDS)} "
      f"({len(leaves)} arrays differ, e.g. {'; '.join(leaves[:2])}). Either resume with the "
      f"workdir's own config (recorded in {os.path.join(workdir, 'run_info')}/config_*.json"
      f"{'; e.g. add ' + overrides if overrides else ''}), or train this config in a new --workdir.")


def write(config, workdir: str) -> None:
  """Records the signature at a workdir's first training start (process 0; never overwritten)."""
  if jax.process_index() != 0 or os.path.isfile(path(workdir)):
    return
  tmp = path(workdir) + ".tmp"
  with open(tmp, "w") as f:
    json.dump(compute(config), f, indent=1, sort_keys=True)
  os.replace(tmp, path(workdir))
