"""Alias of `python -m mf_jax.convert py_meanflow_unet` (mf_jax/convert/formats/py_meanflow_unet.py).

  python -m mf_jax.convert.cifar_unet_torch --checkpoint=model.pth --workdir=/tmp/cifar_release \
      [--network=net_ema1] [--config=configs/cifar10_unet.py]
"""
import sys

from mf_jax.convert.formats.py_meanflow_unet import (  # pylint: disable=unused-import
    NAME_RULES, NETWORKS, convert, read_checkpoint, to_flax)

if __name__ == "__main__":
  from mf_jax.convert import __main__ as cli  # pylint: disable=g-import-not-at-top
  cli.alias("python -m mf_jax.convert.cifar_unet_torch", "py_meanflow_unet",
            {"--checkpoint": "--src"}, sys.argv, defaults=("--config=configs/cifar10_unet.py",))
