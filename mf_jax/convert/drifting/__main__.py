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

The release's MAE feature encoder (artifact folder of the same format, e.g. its mae_latent_256)
converts into an MAE workdir of this project, which a drifting run then reads as its frozen encoder:

  python -m mf_jax.convert.drifting --encoder_src=/ckpts/mae_latent_256 \
      --encoder_workdir=/runs/mae256_release --config=configs/imagenet_drift_ablation.py
  python main.py --config=configs/imagenet_drift_ablation.py --workdir=$DIR \
      --config.drifting.feature_encoder_workdir=/runs/mae256_release --config.data.path=$LATENTS

The pixel configs' ConvNeXt-V2 (drifting.use_convnext) is not part of the release's artifacts: the
release builds it from the Hugging Face PyTorch checkpoint facebook/convnextv2-base-22k-224 when
training starts. A local copy of that checkpoint (its folder with model.safetensors or
pytorch_model.bin, or the file itself) converts into this project's weights file:

  python -m mf_jax.convert.drifting --convnext_src=/ckpts/convnextv2-base-22k-224 \
      --convnext_out=/ckpts/convnext_base.npz --config=configs/imagenet_drift_pixel_b16.py
  python main.py --config=configs/imagenet_drift_pixel_b16.py --workdir=$DIR \
      --config.drifting.convnext_path=/ckpts/convnext_base.npz ...
"""
import os
from typing import Tuple

import jax
import numpy as np
from flax import traverse_util

from mf_jax import train_state as ts
from mf_jax.convert import meanflow_official
from mf_jax.convert.drifting import encoders
from mf_jax.convert.drifting import generator as generator_lib
from mf_jax.models import convnext


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
  # Empty sample queues: training refills them, sampling ignores them. The feature encoder is its
  # own workdir (build_encoder_state), read when training starts, not needed to sample.
  aux = _zeros(abstract.aux)
  return ts.TrainState(step=np.asarray(int(metadata.get("step", 0)), np.int32), params=params,
                       opt_state=_zeros(abstract.opt_state),
                       ema_params=tuple(params for _ in config.ema_decays),
                       nonfinite_step=np.asarray(-1, np.int32), aux=aux)


def _mae_config(config):
  """The MAE run of config's mae section (method='mae'), as train.load_feature_encoder builds it."""
  mae = config.copy_and_resolve_references()
  mae.method = "mae"
  return mae


def build_encoder_state(config, release_params, metadata) -> ts.TrainState:
  """An MAE TrainState (method='mae' of config's mae section) holding the release encoder's EMA
  parameters as its parameters and every EMA copy, as train.load_feature_encoder reads it."""
  mae = _mae_config(config)
  if mae.mae.arch != "release":
    raise ValueError(f"mae.arch={mae.mae.arch!r}: the release's encoder needs mae.arch='release' "
                     "(e.g. configs/imagenet_drift_ablation.py or configs/mae_latent_256.py).")
  model, optimizer = ts.build_model(mae), ts.make_optimizer(mae)
  abstract = jax.eval_shape(lambda k: ts.init_state(mae, model, optimizer, k), jax.random.key(0))
  params = jax.tree_util.tree_map(lambda p, a: np.asarray(p, a.dtype),
                                  encoders.convert_mae(release_params, model, mae.data.image_size),
                                  abstract.params)
  return ts.TrainState(step=np.asarray(int(metadata.get("step", 0)), np.int32), params=params,
                       opt_state=_zeros(abstract.opt_state),
                       ema_params=tuple(params for _ in mae.ema_decays),
                       nonfinite_step=np.asarray(-1, np.int32), aux=_zeros(abstract.aux))


def convert_encoder_to_workdir(src: str, config, workdir: str) -> Tuple[ts.TrainState, str]:
  """The release MAE artifact at `src` -> an MAE workdir for drifting.feature_encoder_workdir."""
  release_params, metadata = generator_lib.read_release(src)
  state = build_encoder_state(config, release_params, metadata)
  return state, meanflow_official.write_workdir(state, _mae_config(config), workdir)


def convert_to_workdir(src: str, config, workdir: str) -> Tuple[ts.TrainState, str]:
  """Reads the artifact at `src`, converts it, and writes the workdir's first checkpoint."""
  release_params, metadata = generator_lib.read_release(src)
  state = build_state(config, release_params, metadata)
  return state, meanflow_official.write_workdir(state, config, workdir)


def read_hf_state_dict(src: str):
  """The state dict of a local Hugging Face checkpoint: a folder holding model.safetensors or
  pytorch_model.bin, or one of those files."""
  if os.path.isdir(src):
    names = [n for n in ("model.safetensors", "pytorch_model.bin")
             if os.path.isfile(os.path.join(src, n))]
    if not names:
      raise FileNotFoundError(f"--convnext_src={src} holds neither model.safetensors nor "
                              "pytorch_model.bin (a Hugging Face ConvNextV2ForImageClassification "
                              "checkpoint such as facebook/convnextv2-base-22k-224).")
    src = os.path.join(src, names[0])
  if src.endswith(".safetensors"):
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    return load_file(src)
  import torch  # pylint: disable=g-import-not-at-top
  return torch.load(src, map_location="cpu", weights_only=True)


def convert_convnext_to_file(src: str, config, out: str) -> Tuple[dict, str]:
  """Hugging Face ConvNeXt-V2 checkpoint at `src` -> this project's weights file `out` for
  drifting.convnext_path (size from config.drifting.convnext_depths/convnext_dims)."""
  variables = encoders.convert_convnext_hf(read_hf_state_dict(src), ts.convnext_model(config))
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  convnext.save_variables(out, variables)
  return variables, out


def main(argv):
  del argv
  from absl import app, flags, logging  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  jobs = [("generator", f.src, f.workdir, convert_to_workdir),
          ("MAE encoder", f.encoder_src, f.encoder_workdir, convert_encoder_to_workdir),
          ("ConvNeXt", f.convnext_src, f.convnext_out, convert_convnext_to_file)]
  if not any(src and out for _, src, out, _ in jobs):
    raise app.UsageError("give --src and --workdir (generator), --encoder_src and "
                         "--encoder_workdir (MAE feature encoder), --convnext_src and "
                         "--convnext_out (ConvNeXt-V2 of the pixel configs), or several pairs.")
  for what, src, workdir, convert in jobs:
    if src or workdir:
      if not (src and workdir):
        raise app.UsageError(f"the {what} needs both its source and its output flag.")
      state, directory = convert(src, f.config, workdir)
      params = state if isinstance(state, dict) else state.params  # ConvNeXt: its variables.
      logging.info("Converted the %s %s (%s%d parameters) into %s.", what, src,
                   f"step {int(state.step)}, " if hasattr(state, "step") else "",
                   sum(int(np.size(p)) for p in jax.tree_util.tree_leaves(params)), directory)


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", None, "This project's config of the same generator "
                                  "(e.g. configs/imagenet_drift_l2_sota.py).", lock_config=True)
  flags.DEFINE_string("src", None, "The release's generator artifact folder (ema_params.msgpack, "
                      "metadata.json), or a release workdir holding params_ema/.")
  flags.DEFINE_string("workdir", None, "Empty workdir to write; then run main.py --mode=eval on it.")
  flags.DEFINE_string("encoder_src", None, "The release's MAE encoder artifact folder (e.g. "
                      "mae_latent_256: ema_params.msgpack, metadata.json).")
  flags.DEFINE_string("encoder_workdir", None, "Empty workdir for the converted MAE; give it to "
                      "training as --config.drifting.feature_encoder_workdir.")
  flags.DEFINE_string("convnext_src", None, "A local Hugging Face ConvNeXt-V2 checkpoint (folder "
                      "or model.safetensors / pytorch_model.bin), e.g. "
                      "facebook/convnextv2-base-22k-224.")
  flags.DEFINE_string("convnext_out", None, "The .npz to write; give it to training as "
                      "--config.drifting.convnext_path.")
  flags.mark_flags_as_required(["config"])
  app.run(main)
