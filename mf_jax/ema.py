"""The EMA copies of the parameters: how many, their names, which one a reader picks, and the
decay each applies at a given step.

Two ways to define the copies (mf_jax/optim_config.py), one per run:
- ema_decays: one copy per constant decay, named by the decay ("0.9999");
- ema_half_lives_kimg: one copy per EDM half-life in thousands of images ("500kimg"), whose
  decay at update `step` is beta = 0.5 ** (B / max(min(K * 1000, step * B * r), 1e-8)) with the
  global batch B and the ramp-up ratio r (ema_rampup_ratio): the EMA halves the weight of the
  past every K * 1000 images, and early on every step * r steps (Karras et al. 2022, EDM; pMF's
  three EMAs of 500, 1000 and 2000 kimg at batch 1024).

The trainer's state holds the copies in this order (TrainState.ema_params); --mode=sample and
--mode=eval pick one by `ema_index(config, "sample" | "eval")`.
"""
from typing import Tuple

import jax.numpy as jnp

from mf_jax.errors import ConfigError

# beta(0) = 0.5 ** (B / 1e-8) = 0: an update at step 0 would copy the parameters.
MIN_HALF_LIFE_IMAGES = 1e-8


def uses_half_lives(config) -> bool:
  return bool(tuple(config.ema_half_lives_kimg))


def definition(config) -> str:
  """The field that defines the copies, with its value: e.g. "ema_decays=(0.995,)"."""
  if uses_half_lives(config):
    return f"ema_half_lives_kimg={tuple(config.ema_half_lives_kimg)}"
  return f"ema_decays={tuple(config.ema_decays)}"


def num_emas(config) -> int:
  """How many EMA copies the state keeps."""
  return len(config.ema_half_lives_kimg) if uses_half_lives(config) else len(config.ema_decays)


def _number_text(x) -> str:
  """500 -> "500", 500.0 -> "500", 0.5 -> "0.5", 0.9999 -> "0.9999" (shortest exact repr)."""
  x = float(x)
  return str(int(x)) if x.is_integer() else repr(x)


def ema_names(config) -> Tuple[str, ...]:
  """The names of the EMA copies, in state order: "500kimg" per half-life, "0.9999" per decay."""
  if uses_half_lives(config):
    return tuple(f"{_number_text(k)}kimg" for k in config.ema_half_lives_kimg)
  return tuple(_number_text(d) for d in config.ema_decays)


def ema_index(config, section: str) -> int:
  """The copy config.<section> ("sample" or "eval") reads: by ema_name when set, else ema_index.

  Raises ConfigError for a name the run does not keep; the index's range is checked by the
  section's validation (config_checks, eval.evaluators), which also knows use_ema.
  """
  fields = config[section]
  if not fields.ema_name:
    return fields.ema_index
  names = ema_names(config)
  if fields.ema_name not in names:
    raise ConfigError(
        f"{section}.ema_name={fields.ema_name!r}: this run keeps no EMA copy of that name "
        f"({definition(config)} names its copies {list(names)}). Fix: set "
        f"--config.{section}.ema_name to one of {list(names)}, or to '' to use "
        f"{section}.ema_index.")
  return names.index(fields.ema_name)


def half_life_decay(step, half_life_kimg: float, batch_size: int, rampup_ratio: float):
  """EDM's decay of the update that makes `step` updates applied (1 at the first update).

  beta = 0.5 ** (B / max(min(K * 1000, step * B * r), 1e-8)): during the ramp (step * r * B <
  K * 1000) beta = 0.5 ** (1 / (step * r)), whatever the batch; then 0.5 ** (B / (K * 1000)).
  Float of the default float type (float64 under x64); step may be a traced int32.
  """
  images = jnp.asarray(step).astype(jnp.result_type(float)) * (batch_size * rampup_ratio)
  half_life = jnp.maximum(jnp.minimum(half_life_kimg * 1000.0, images), MIN_HALF_LIFE_IMAGES)
  return 0.5 ** (batch_size / half_life)


def decays_at(config, step) -> tuple:
  """One decay per EMA copy for the update that makes `step` updates applied: the constant
  ema_decays (Python floats, so the default step is unchanged), or the half-life decays."""
  if not uses_half_lives(config):
    return tuple(config.ema_decays)
  return tuple(half_life_decay(step, k, config.train.global_batch_size, config.ema_rampup_ratio)
               for k in config.ema_half_lives_kimg)
