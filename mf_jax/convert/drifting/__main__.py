"""A released Drifting generator (local artifact folder) -> this project's Orbax workdir.

  python -m mf_jax.convert.drifting --src=/ckpts/drift_latent_L \
      --workdir=/runs/drift_l2_release --config=configs/imagenet_drift_l2_sota.py
  python main.py --config=configs/imagenet_drift_l2_sota.py --workdir=/runs/drift_l2_release \
      --mode=eval

--src is the release's generator artifact folder (ema_params.msgpack + metadata.json, as its
trainer saves under params_ema/ and as its Hugging Face repository ships them), or a release
training workdir holding params_ema/. Nothing is downloaded. The EMA parameters become both the
parameters and every EMA copy of a fresh TrainState (optimizer moments zero, sample queues empty),
saved at the release's step; the config must describe the same generator (model.name='dit_modern',
same variant, class tokens and noise labels); every mismatch is listed before anything is written.
"""
from typing import Tuple

import jax
import numpy as np
from flax import traverse_util

from mf_jax import train_state as ts
from mf_jax.convert import meanflow_official
from mf_jax.convert.drifting import generator as generator_lib


def _zeros(abstract):
  return jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), abstract)


def build_state(config, release_params, metadata) -> ts.TrainState:
  """This project's TrainState for `config` holding the release generator's EMA parameters."""
  if config.method != "drifting" or config.model.name != "dit_modern":
    raise ValueError(f"method={config.method!r}, model.name={config.model.name!r}: the release's "
                     "generator needs method='drifting' and model.name='dit_modern' (e.g. "
                     "configs/imagenet_drift_l2_sota.py).")
  model, optimizer = ts.build_model(config), ts.make_optimizer(config)
  abstract = jax.eval_shape(lambda k: ts.init_state(config, model, optimizer, k),
                            jax.random.key(0))
  target = traverse_util.flatten_dict(abstract.params["params"], sep="/")
  problems = generator_lib.check_model_config(metadata.get("model_config") or {}, config,
                                              model.dims())
  flat = generator_lib.convert_params(release_params, target, model.condition_names[0], problems)
  params = {"params": traverse_util.unflatten_dict(flat, sep="/")}
  aux = _zeros(abstract.aux)  # Empty sample queues: training refills them, sampling ignores them.
  # --- Feature encoders (coordinator): convert the release's MAE / ConvNeXt here with
  # mf_jax/convert/drifting/encoders.py and place them in aux["encoder"] (or write the MAE's own
  # workdir for drifting.feature_encoder_workdir). Until then training re-reads the encoder from
  # drifting.feature_encoder_workdir, and sampling / evaluation do not need it. ---
  return ts.TrainState(step=np.asarray(int(metadata.get("step", 0)), np.int32), params=params,
                       opt_state=_zeros(abstract.opt_state),
                       ema_params=tuple(params for _ in config.ema_decays),
                       nonfinite_step=np.asarray(-1, np.int32), aux=aux)


def convert_to_workdir(src: str, config, workdir: str) -> Tuple[ts.TrainState, str]:
  """Reads the artifact at `src`, converts it, and writes the workdir's first checkpoint."""
  release_params, metadata = generator_lib.read_release(src)
  state = build_state(config, release_params, metadata)
  return state, meanflow_official.write_workdir(state, config, workdir)


def main(argv):
  del argv
  from absl import flags, logging  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  state, directory = convert_to_workdir(f.src, f.config, f.workdir)
  logging.info("Converted the release generator %s (step %d, %d parameters) into %s.", f.src,
               int(state.step),
               sum(int(np.size(p)) for p in jax.tree_util.tree_leaves(state.params)), directory)


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", None, "This project's config of the same generator "
                                  "(e.g. configs/imagenet_drift_l2_sota.py).", lock_config=True)
  flags.DEFINE_string("src", None, "The release's generator artifact folder (ema_params.msgpack, "
                      "metadata.json), or a release workdir holding params_ema/.")
  flags.DEFINE_string("workdir", None, "Empty workdir to write; then run main.py --mode=eval on it.")
  flags.mark_flags_as_required(["config", "src", "workdir"])
  app.run(main)
