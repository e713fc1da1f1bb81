"""The Drifting release's MAE feature encoder (MAEResNetJAX) -> this project's MAE workdir.

The release keeps the MAE as a Flax parameter tree (an artifact folder like the generator's:
ema_params.msgpack + metadata.json, e.g. its mae_latent_256). Names map by MAE_RULES onto
mf_jax/models/mae_resnet.py (same layouts, no transposes). The result is an MAE workdir of this
project (method='mae' of the config's mae section), which a drifting run reads as its frozen
encoder (drifting.feature_encoder_workdir).
"""
from typing import Any, Dict, Mapping

import jax
import jax.numpy as jnp

from mf_jax.convert import engine
from mf_jax.convert.formats import drifting_generator

# (release path, this project's path); the first full match wins.
MAE_RULES = engine.rules(
    (r"encoder/conv1/kernel", r"encoder/stem_conv/kernel"),
    (r"encoder/gn1/(scale|bias)", r"encoder/stem_norm/\1"),
    (r"encoder/layer(\d)_norm/(scale|bias)", lambda m: f"encoder/stage{int(m[1]) - 1}_norm/{m[2]}"),
    (r"encoder/stages_(\d)/layers_(\d+)/(conv1|conv2)/kernel", r"encoder/stage\1_block\2/\3/kernel"),
    (r"encoder/stages_(\d)/layers_(\d+)/gn(1|2)/(scale|bias)", r"encoder/stage\1_block\2/norm\3/\4"),
    (r"encoder/stages_(\d)/layers_(\d+)/proj_conv/kernel", r"encoder/stage\1_block\2/skip_conv/kernel"),
    (r"encoder/stages_(\d)/layers_(\d+)/proj_gn/(scale|bias)", r"encoder/stage\1_block\2/skip_norm/\3"),
    (r"decoder/bridge/conv/kernel", r"decoder/bridge/conv/kernel"),
    (r"decoder/bridge/gn/(scale|bias)", r"decoder/bridge/norm/\1"),
    (r"decoder/up\d(\d)/concat_norm_fn/(scale|bias)", r"decoder/up\1/concat_norm/\2"),
    (r"decoder/up\d(\d)/(proj|refine)/conv/kernel", r"decoder/up\1/\2/conv/kernel"),
    (r"decoder/up\d(\d)/(proj|refine)/gn/(scale|bias)", r"decoder/up\1/\2/norm/\3"),
    (r"decoder/head/(kernel|bias)", r"decoder/head/\1"),
    (r"fc/(kernel|bias)", r"classifier/\1"),
)
FIX = ("give the config whose mae section (widths, layers, channels, input_patch_size) is the "
       "release encoder's (e.g. configs/imagenet_drift_ablation.py)")


def unwrap(tree: Mapping[str, Any]) -> Dict[str, Any]:
  """A Flax tree, possibly under a top {"params": ...} key, as a flat '/'-joined dict."""
  if set(tree) == {"params"} and hasattr(tree["params"], "keys"):
    tree = tree["params"]
  return engine.flat(tree)


def to_variables(out: Mapping[str, Any]) -> Dict[str, Any]:
  return {"params": engine.nest({k: jnp.asarray(v) for k, v in out.items()})}


def convert_mae(release_params: Mapping[str, Any], model, image_size: int) -> Dict[str, Any]:
  """Release MAEResNetJAX parameters -> variables of mf_jax.models.mae_resnet.MAEResNet `model`."""
  x = jnp.zeros((1, image_size, image_size, model.channels), jnp.float32)
  mask = jnp.zeros(x.shape[:3] + (1,), bool)
  target = engine.abstract_params(lambda: model.init(jax.random.key(0), x, mask))
  problems = []
  out = engine.convert(unwrap(release_params), MAE_RULES, target, problems)
  engine.report(problems, "the release's MAE encoder does not fit this config's mae section", FIX)
  return to_variables(out)


def mae_config(config):
  """The MAE run of config's mae section (method='mae'), as the trainer builds the encoder."""
  mae = config.copy_and_resolve_references()
  mae.method = "mae"
  return mae


def build_encoder_state(config, release_params, metadata):
  """An MAE TrainState (method='mae' of config's mae section) holding the release encoder's EMA
  parameters as its parameters and every EMA copy."""
  from mf_jax import train_state as ts  # pylint: disable=g-import-not-at-top
  from mf_jax.convert import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  mae = mae_config(config)
  if mae.mae.arch != "release":
    raise engine.UserError("--config", f"mae.arch={mae.mae.arch!r}: the release's encoder needs "
                           "mae.arch='release'", "use e.g. configs/imagenet_drift_ablation.py "
                           "or configs/mae_latent_256.py")
  params = convert_mae(release_params, ts.build_model(mae), mae.data.image_size)
  return workdir_lib.fresh_state(mae, params, int(metadata.get("step", 0)))


def convert_encoder_to_workdir(src: str, config, workdir: str):
  """The release MAE artifact at `src` -> an MAE workdir for drifting.feature_encoder_workdir."""
  from mf_jax.convert import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  state = build_encoder_state(config, *drifting_generator.read_release(src))
  return state, workdir_lib.write(state, mae_config(config), workdir)
