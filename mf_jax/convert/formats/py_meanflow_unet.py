"""The released MeanFlow CIFAR-10 checkpoint (py-meanflow, PyTorch) -> this project's SongUNet.

The .pth holds {"model": state_dict, "epoch": ...}; its state dict has one SongUNet per copy:
"net." (raw), "net_ema." (decay 0.9999), "net_ema1." (0.99995, the one the release evaluates,
FID ~2.8), "net_ema2." (0.9996). One copy is converted into mf_jax.models.unet.SongUNet parameters.

Names: "enc.32x32_block0.conv0.weight" -> "enc_32x32_block0/conv0/kernel" (the Flax module names
fold the first dot); conv weights [O, I, kH, kW] -> [kH, kW, I, O], linear [O, I] -> [I, O], norm
weight -> scale. The resampling filters (buffers) are constants of the Flax network: checked, not
copied.
"""
from typing import Dict, List, Mapping

import numpy as np

from mf_jax.convert import engine, readers

NETWORKS = ("net", "net_ema", "net_ema1", "net_ema2")
RESAMPLE_FILTER = r".*\.resample_filter"


def _flax_name(m) -> str:
  """Torch key (weight / bias) -> '/'-joined Flax path; the module kind picks kernel or scale."""
  path = m[1].replace("enc.", "enc_", 1).replace("dec.", "dec_", 1).replace(".", "/")
  return f"{path}/kernel|{path}/scale" if m[2] == "weight" else f"{path}/{m[2]}"


NAME_RULES = engine.rules(
    (RESAMPLE_FILTER, None),  # Constants of the Flax network: _check_filters checks them.
    (r"(.*)\.(weight|bias)", _flax_name, "torch"),
)


def read_checkpoint(path: str, network: str = "net_ema1") -> Dict[str, np.ndarray]:
  """{key without the network prefix: float array} of one network copy in a py-meanflow .pth."""
  ckpt = readers.read_torch(path, weights_only=False)
  state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else ckpt
  prefix = network + "."
  out = {k[len(prefix):]: engine.as_numpy(v) for k, v in state.items() if k.startswith(prefix)}
  if not out:
    found = sorted({k.split(".")[0] for k in state})
    raise engine.SourceError(path, f"has no tensors under {prefix!r} (it holds {found})",
                             f"choose --network from {found}; the release evaluates net_ema1")
  return out


def _check_filters(state: Mapping[str, np.ndarray], problems: List[str]) -> None:
  f = np.asarray([1, 3, 3, 1], np.float64)
  for key, value in state.items():
    if key.endswith(".resample_filter") and not np.allclose(
        np.asarray(value).reshape(4, 4), np.outer(f, f) / f.sum() ** 2):
      problems.append(f"misshaped: {key}: resampling filter differs from [1, 3, 3, 1] (the only "
                      "one here)")


def to_flax(state: Mapping[str, np.ndarray], expected_params) -> dict:
  """Torch SongUNet state dict (no prefix) -> Flax variables shaped like `expected_params`
  (model.init's {"params": ...} or the bare tree). Raises engine.ConversionError listing all
  problems."""
  root = "params" in expected_params
  target = engine.flat(expected_params["params"] if root else expected_params)
  problems: List[str] = []
  _check_filters(state, problems)
  out = engine.convert(state, NAME_RULES, target, problems)
  engine.report(problems, "the py-meanflow state dict does not fit this SongUNet",
                "use the released model section (configs/cifar10_unet.py)")
  return {"params": engine.nest(out)} if root else engine.nest(out)


def convert(checkpoint: str, workdir: str, config, network: str = "net_ema1") -> str:
  """The `network` copy of a py-meanflow .pth -> a workdir whose parameters and every EMA copy
  are it (so --mode=sample/eval, which read ema_params, use it); returns the checkpoint folder."""
  import jax  # pylint: disable=g-import-not-at-top
  from mf_jax import train_state as ts  # pylint: disable=g-import-not-at-top
  from mf_jax.convert import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  state_dict = read_checkpoint(checkpoint, network)
  model = ts.build_model(config)
  expected = jax.eval_shape(lambda k: model.init(k, *ts.example_inputs(config)), jax.random.key(0))
  params = to_flax(state_dict, expected)
  state = workdir_lib.fresh_state(config, params, step=0)
  return workdir_lib.write(state, config, workdir)
