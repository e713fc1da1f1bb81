"""The released MeanFlow CIFAR-10 checkpoint (py-meanflow, PyTorch) -> this project's Orbax workdir.

The .pth holds {"model": state_dict, "epoch": ...}; its state dict has one SongUNet per copy:
"net." (raw), "net_ema." (decay 0.9999), "net_ema1." (0.99995, the one the release evaluates,
FID ~2.8), "net_ema2." (0.9996). One copy is converted into mf_jax.models.unet.SongUNet parameters.

Mapping: "enc.32x32_block0.conv0.weight" -> ("enc_32x32_block0", "conv0", "kernel"); conv weights
[O, I, kH, kW] -> [kH, kW, I, O], linear [O, I] -> [I, O], norm weight -> scale. The resampling
filters (buffers) are constants of the Flax network and are checked, not copied. Every Flax parameter
must be filled and every tensor used, else a ValueError names the keys.

  python -m mf_jax.convert.cifar_unet_torch --checkpoint=model.pth --workdir=/tmp/cifar_release \
      [--network=net_ema1] [--config=configs/cifar10_unet.py]
then  python main.py --config=configs/cifar10_unet.py --workdir=/tmp/cifar_release --mode=eval
"""
import argparse
from typing import Dict, Mapping

import flax.traverse_util
import numpy as np

NETWORKS = ("net", "net_ema", "net_ema1", "net_ema2")


def read_checkpoint(path: str, network: str = "net_ema1") -> Dict[str, np.ndarray]:
  """{key without the network prefix: float array} of one network copy in a py-meanflow .pth."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"Reading {path!r} needs PyTorch (the release is a torch pickle): "
                      "pip install torch (CPU is enough), then run the converter again.") from e
  ckpt = torch.load(path, map_location="cpu", weights_only=False)
  state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else ckpt
  prefix = network + "."
  out = {k[len(prefix):]: v.detach().cpu().numpy() for k, v in state.items()
         if k.startswith(prefix)}
  if not out:
    found = sorted({k.split(".")[0] for k in state})
    raise ValueError(f"--network={network!r}: {path!r} has no tensors under {prefix!r}; it holds "
                     f"{found}. The release evaluates net_ema1.")
  return out


def to_flax(state: Mapping[str, np.ndarray], expected_params) -> dict:
  """Torch SongUNet state dict (no prefix) -> Flax variables shaped like `expected_params`."""
  flat_expected = flax.traverse_util.flatten_dict(expected_params)
  root = ("params",) if "params" in expected_params else ()  # model.init's {"params": ...} or bare.
  out, unused = {}, []
  for key, value in state.items():
    value = np.asarray(value)
    parts = key.replace("enc.", "enc_", 1).replace("dec.", "dec_", 1).split(".")
    if parts[-1] == "resample_filter":
      f = np.asarray([1, 3, 3, 1], np.float64)
      if not np.allclose(value.reshape(4, 4), np.outer(f, f) / f.sum() ** 2):
        raise ValueError(f"{key}: resampling filter differs from [1, 3, 3, 1] (the only one here).")
      continue
    *modules, leaf = root + tuple(parts)
    if leaf == "weight" and value.ndim == 4:
      path, value = (*modules, "kernel"), value.transpose(2, 3, 1, 0)
    elif leaf == "weight" and value.ndim == 2:
      path, value = (*modules, "kernel"), value.T
    elif leaf == "weight":
      path = (*modules, "scale")
    else:
      path = (*modules, leaf)
    if path not in flat_expected:
      unused.append(key)
      continue
    if flat_expected[path].shape != value.shape:
      raise ValueError(f"{key}: shape {value.shape} after conversion, the Flax network expects "
                       f"{flat_expected[path].shape} at {'/'.join(path)}; check the model config.")
    out[path] = value
  missing = sorted("/".join(p) for p in flat_expected if p not in out)
  if unused or missing:
    raise ValueError(f"Checkpoint and network differ: unused checkpoint tensors {unused[:10]} "
                     f"({len(unused)}), unfilled Flax parameters {missing[:10]} ({len(missing)}). "
                     "Is the config's model section the released one (configs/cifar10_unet.py)?")
  return flax.traverse_util.unflatten_dict(out)


def write_workdir(params, config, workdir: str, step: int = 0) -> None:
  """Saves a training state whose parameters and every EMA copy are `params`, so --mode=sample and
  --mode=eval (which read ema_params) use the converted network."""
  import jax  # pylint: disable=g-import-not-at-top
  from mf_jax import checkpointing
  from mf_jax import train_state as ts
  model, optimizer = ts.build_model(config), ts.make_optimizer(config)
  params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params)
  state = ts.TrainState(step=np.int32(step), params=params, opt_state=optimizer.init(params),
                        ema_params=tuple(params for _ in config.ema_decays),
                        nonfinite_step=np.int32(-1))
  del model
  ckpt = checkpointing.Checkpointer(workdir, keep=1, async_save=False)
  ckpt.save(step, state)
  ckpt.wait()
  ckpt.close()


def convert(checkpoint: str, workdir: str, config, network: str = "net_ema1") -> None:
  import jax  # pylint: disable=g-import-not-at-top
  from mf_jax import train_state as ts
  model = ts.build_model(config)
  expected = jax.eval_shape(lambda k: model.init(k, *ts.example_inputs(config)), jax.random.key(0))
  params = to_flax(read_checkpoint(checkpoint, network), expected)
  write_workdir(params, config, workdir)


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m mf_jax.convert.cifar_unet_torch",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--checkpoint", required=True, help="py-meanflow .pth (e.g. the release)")
  parser.add_argument("--workdir", required=True, help="Orbax workdir to create")
  parser.add_argument("--network", default="net_ema1", choices=NETWORKS)
  parser.add_argument("--config", default="configs/cifar10_unet.py")
  args = parser.parse_args(argv)
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("converter_config", args.config)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  convert(args.checkpoint, args.workdir, config, args.network)
  print(f"Wrote {args.network} of {args.checkpoint} to {args.workdir} (step 0).")


if __name__ == "__main__":
  main()
