"""Alias of the FID Inception converter (mf_jax/convert/formats/inception.py) with this network's
shapes filled in; `python -m eval.inception_convert --pth=X.pth --out=X.npz` is
`python -m mf_jax.convert inception --src=X.pth --out=X.npz`."""
import sys
from typing import Any, Dict, Optional

from eval import inception
from mf_jax.checksum import file_sha256  # pylint: disable=unused-import
from mf_jax.convert.formats.inception import (  # pylint: disable=unused-import
    IGNORED_TORCH_SUFFIXES, WEIGHTS_FILE, WEIGHTS_URLS, check_sha256, download_weights,
    flax_to_torch_state_dict, missing_weights_message, read_state_dict, torch_key)
from mf_jax.convert.formats import inception as _format


def torch_state_dict_to_flax(state_dict: Dict[str, Any]) -> Dict[str, Any]:
  return _format.torch_state_dict_to_flax(state_dict, inception.param_shapes())


def load_flax_params(path: str, sha256: Optional[str] = "auto") -> Dict[str, Any]:
  return _format.load_flax_params(path, inception.param_shapes(), sha256)


def pth_to_npz(pth_path: str, npz_path: str, sha256: Optional[str] = "auto") -> str:
  return _format.pth_to_npz(pth_path, npz_path, inception.param_shapes(), sha256)


def main(argv=None):
  from mf_jax.convert import __main__ as cli  # pylint: disable=g-import-not-at-top
  cli.alias("eval.inception_convert", "inception",
            {"--pth": "--src", "--out": "--out", "--sha256": "--sha256"}, argv)


if __name__ == "__main__":
  main(sys.argv)
