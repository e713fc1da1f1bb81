"""Parameter counts of the released Drifting generators, official module vs mf_jax's, from shapes.

Imports `DitGen` from a local checkout of github.com/lambertae/drifting (commit
accd0cf09c33b70892d33941d2a287ca86cb92e1; nothing of it is kept here), builds each released
generator config (configs/gen/*.yaml, 1000 classes, as its trainer does) under jax.eval_shape
(nothing is allocated) and prints its count next to mf_jax.models.dit_modern.count_params:

  git --git-dir=<bare clone> archive accd0cf09c33b70892d33941d2a287ca86cb92e1 models utils configs \
      | tar -x -C /tmp/drifting_official
  python scripts/drifting_release_param_counts.py --official=/tmp/drifting_official

The counts it printed are the ones tests/test_drifting_generator.py checks (RELEASED_COUNTS).
"""
import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
RELEASED = ("latent_ablation", "latent_sota_B", "latent_sota_L", "pixel_sota_B", "pixel_sota_L")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--official", required=True, help="checkout holding models/, utils/, configs/")
  args = parser.parse_args()
  sys.path.insert(0, args.official)
  from utils.hsdp_util import set_global_mesh  # pylint: disable=g-import-not-at-top
  set_global_mesh(1)
  from models.generator import DitGen  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.dirname(HERE))
  from mf_jax.models import dit_modern  # pylint: disable=g-import-not-at-top

  names = {768: "B", 1024: "L"}
  for name in RELEASED:
    with open(os.path.join(args.official, "configs", "gen", f"{name}.yaml")) as f:
      m = yaml.safe_load(f)["model"]
    module = DitGen(num_classes=1000, **m)
    shapes = jax.eval_shape(lambda k: module.init({"params": k, "noise": k},  # pylint: disable=cell-var-from-loop
                                                  jnp.zeros((1,), jnp.int32), 1.0),
                            jax.random.key(0))
    official = sum(int(np.prod(s.shape)) for s in jax.tree_util.tree_leaves(shapes))
    variant = f"{names[m['hidden_size']]}/{m['patch_size']}"
    ours = dit_modern.count_params(variant, m["input_size"], m["in_channels"], num_classes=1000,
                                   cls_tokens=m["n_cls_tokens"], noise_classes=m["noise_classes"],
                                   noise_coords=m["noise_coords"])
    print(f"{name:16s} {variant:5s} official {official:,d}  mf_jax {ours:,d}  "
          f"{'equal' if ours == official else 'DIFFERENT'}")


if __name__ == "__main__":
  main()
