"""Alias of `python -m mf_jax.convert meanflow_official` (mf_jax/convert/formats/meanflow_official.py).

  python -m mf_jax.convert.meanflow_official --config=configs/imagenet_b4.py \
      --checkpoint=/ckpts/mf_b4 --workdir=/runs/mf_b4_official
"""
import sys

from mf_jax.convert.formats.meanflow_official import (  # pylint: disable=unused-import
    CHECKPOINT_FILE, NAME_RULES, convert, convert_to_workdir, find_checkpoint, map_name,
    read_official)
from mf_jax.convert.workdir import write as write_workdir  # pylint: disable=unused-import

if __name__ == "__main__":
  from mf_jax.convert import __main__ as cli  # pylint: disable=g-import-not-at-top
  cli.alias("python -m mf_jax.convert.meanflow_official", "meanflow_official",
            {"--checkpoint": "--src"}, sys.argv)
