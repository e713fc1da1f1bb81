"""Parameter counts of the official pMF networks (Lyy-iiis/pMF models/pmfDiT.py), from shapes only.

Runs the official pmfDiT_{B,L}_{16,32} (main branch) and pmfDiT_H_{16,32} (the `hsdp` branch, which
rounds the SwiGLU width up to a multiple of 8) from a temporary, unedited copy under jax.eval_shape
(nothing is allocated), for the training module (eval=False) and the inference module
(eval=True), and prints them beside mf_jax.models.dit_pixel's counts of the same sizes. The
official numbers are recorded in tests/test_pmf_network.py.

It also maps every official parameter name and shape onto PixelDiT's with the release converter's
tables (mf_jax/convert/formats/pmf_official.py) and prints the problems (none expected): the JAX
modules' trees (ORBAX_RULES; the inference module onto the u path) and the PyTorch branch's state
dicts (TORCH_RULES; modules built on torch's meta device, nothing allocated).

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
TORCH_COMMIT = "990e81a84249dbd68a128accef67eb95621d10b1"  # Lyy-iiis/pMF torch (.pt release).
SIZES = {"B/16": 256, "L/16": 256, "B/32": 512, "L/32": 512, "H/16": 256, "H/32": 512}


def _forget_models():
  for name in [m for m in sys.modules if m == "models" or m.startswith("models.")]:
    del sys.modules[name]


def _zeros(shape):
  return np.broadcast_to(np.zeros((), np.float32), tuple(shape))  # A view: nothing allocated.


def mapping_problems(official_shapes, table, inference, variant):
  """Problems of mapping {official name: shape} onto PixelDiT(variant) (u path if inference)."""
  from mf_jax.convert import engine  # pylint: disable=import-outside-toplevel
  from mf_jax.convert.formats import pmf_official  # pylint: disable=import-outside-toplevel
  from mf_jax.models import dit_pixel  # pylint: disable=import-outside-toplevel
  model = dit_pixel.PixelDiT(variant=variant, image_size=SIZES[variant])
  target = pmf_official.model_params(model)
  if inference:
    target = {k: v for k, v in target.items()
              if not k.startswith(pmf_official.ABSENT_IN_INFERENCE)}
  problems = []
  engine.convert({k: _zeros(s) for k, s in official_shapes.items()}, table, target, problems)
  return problems


def official_counts(folder, variants):
  """{variant: (training count, inference count, mapping problems)} of the official modules in
  `folder`."""
  sys.path.insert(0, folder)
  try:
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    from models import pmfDiT  # pylint: disable=import-error,import-outside-toplevel
    out = {}
    for variant in variants:
      size = SIZES[variant]
      ctor = getattr(pmfDiT, "pmfDiT_" + variant.replace("/", "_"))
      counts, problems = [], []
      for evaluation in (False, True):
        net = ctor(num_classes=1000, eval=evaluation)
        s = jax.ShapeDtypeStruct((1,), jnp.float32)
        shapes = jax.eval_shape(net.init, jax.random.key(0),
                                jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32), s, s, s, s,
                                s, jax.ShapeDtypeStruct((1,), jnp.int32))
        counts.append(sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(shapes)))
        from flax import traverse_util  # pylint: disable=import-outside-toplevel
        from mf_jax.convert.formats import pmf_official  # pylint: disable=import-outside-toplevel
        flat = traverse_util.flatten_dict(shapes["params"], sep="/")
        problems += mapping_problems({k: v.shape for k, v in flat.items()},
                                     pmf_official.ORBAX_RULES, evaluation, variant)
      out[variant] = (*counts, problems)
    return out
  finally:
    sys.path.remove(folder)
    _forget_models()


def torch_problems(folder, variants):
  """{variant: problems} of the PyTorch branch's inference pmfDiT state dicts (meta device)."""
  import torch  # pylint: disable=import-outside-toplevel
  from mf_jax.convert.formats import pmf_official  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, folder)
  try:
    from models import pmfDiT  # pylint: disable=import-error,import-outside-toplevel
    out = {}
    for variant in variants:
      with torch.device("meta"):
        net = getattr(pmfDiT, "pmfDiT_" + variant.replace("/", "_"))(
            input_size=SIZES[variant], num_classes=1000, eval_mode=True)
      shapes = {f"net.{k}": tuple(v.shape) for k, v in net.state_dict().items()}
      out[variant] = mapping_problems(shapes, pmf_official.TORCH_RULES, True, variant)
    return out
  finally:
    sys.path.remove(folder)
    _forget_models()


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
      for variant, (train, inference, problems) in official_counts(tmp, variants).items():
        ours = (dit_pixel.count_params(variant, True, SIZES[variant]),
                dit_pixel.count_params(variant, False, SIZES[variant]))
        print(f"  {variant} at {SIZES[variant]}: official training {train:,}, inference "
              f"{inference:,}; dit_pixel {ours[0]:,}, {ours[1]:,}"
              f"{'' if ours == (train, inference) else '  MISMATCH'}; name mapping problems "
              f"(training and inference): {problems or 'none'}")
    finally:
      shutil.rmtree(tmp)
  tmp = tempfile.mkdtemp(prefix="pmf_official_torch_")
  try:
    resolved = official_checkout.extract(FILES, tmp, args.official_git_dir, commit=TORCH_COMMIT)
    print(f"official torch commit {resolved}")
    for variant, problems in torch_problems(tmp, list(SIZES)).items():
      print(f"  {variant}: .pt state dict onto the inference model: problems {problems or 'none'}")
  finally:
    shutil.rmtree(tmp)


if __name__ == "__main__":
  main()
