"""Parameter counts of the official pMF networks (Lyy-iiis/pMF models/pmfDiT.py), from shapes only.

Runs the official pmfDiT_{B,L}_{16,32} (main branch) and pmfDiT_H_{16,32} (the `hsdp` branch, which
rounds the SwiGLU width up to a multiple of 8) from a temporary, unedited copy under jax.eval_shape
(nothing is allocated), for the training module (eval=False) and the inference module
(eval=True), and prints them beside mf_jax.models.dit_pixel's counts of the same sizes. The
official numbers are recorded in tests/test_pmf_network.py.

  python scripts/pmf_param_counts.py --official_git_dir=/path/to/Lyy-iiis+pMF/repo
"""
import argparse
import os
import shutil
import sys
import tempfile

import numpy as np

import official_checkout  # scripts/official_checkout.py (the scripts run as files)

MAIN_COMMIT = "75f6073042c21f7104686261a0c4784db4ede9d1"  # Lyy-iiis/pMF main.
HSDP_COMMIT = "51930aa28c66b6d76005dc0954c20ac02d2b7ba2"  # Lyy-iiis/pMF hsdp (H models).
FILES = ("models/pmfDiT.py", "models/embedder.py", "models/torch_models.py")
SIZES = {"B/16": 256, "L/16": 256, "B/32": 512, "L/32": 512, "H/16": 256, "H/32": 512}


def official_counts(folder, variants):
  """{variant: (training count, inference count)} of the official modules in `folder`."""
  sys.path.insert(0, folder)
  try:
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    from models import pmfDiT  # pylint: disable=import-error,import-outside-toplevel
    out = {}
    for variant in variants:
      size = SIZES[variant]
      ctor = getattr(pmfDiT, "pmfDiT_" + variant.replace("/", "_"))
      counts = []
      for evaluation in (False, True):
        net = ctor(num_classes=1000, eval=evaluation)
        s = jax.ShapeDtypeStruct((1,), jnp.float32)
        shapes = jax.eval_shape(net.init, jax.random.key(0),
                                jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32), s, s, s, s,
                                s, jax.ShapeDtypeStruct((1,), jnp.int32))
        counts.append(sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(shapes)))
      out[variant] = tuple(counts)
    return out
  finally:
    sys.path.remove(folder)
    for name in [m for m in sys.modules if m == "models" or m.startswith("models.")]:
      del sys.modules[name]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--official_git_dir", required=True, help="git dir of Lyy-iiis/pMF")
  args = parser.parse_args()
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from mf_jax.models import dit_pixel  # pylint: disable=import-outside-toplevel

  for commit, variants in ((MAIN_COMMIT, ("B/16", "L/16", "B/32", "L/32")),
                           (HSDP_COMMIT, ("H/16", "H/32"))):
    tmp = tempfile.mkdtemp(prefix="pmf_official_")
    try:
      resolved = official_checkout.extract(FILES, tmp, args.official_git_dir, commit=commit)
      print(f"official commit {resolved}")
      for variant, (train, inference) in official_counts(tmp, variants).items():
        ours = (dit_pixel.count_params(variant, True, SIZES[variant]),
                dit_pixel.count_params(variant, False, SIZES[variant]))
        print(f"  {variant} at {SIZES[variant]}: official training {train:,}, inference "
              f"{inference:,}; dit_pixel {ours[0]:,}, {ours[1]:,}"
              f"{'' if ours == (train, inference) else '  MISMATCH'}")
    finally:
      shutil.rmtree(tmp)


if __name__ == "__main__":
  main()
