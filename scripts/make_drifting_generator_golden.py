"""Writes tests/golden/drifting_generator_tiny.npz: the released Drifting generator, tiny and random.

The reference is `DitGen` of the official JAX code of Drifting Models (github.com/lambertae/
drifting), commit accd0cf09c33b70892d33941d2a287ca86cb92e1, file models/generator.py (it imports
utils/). This script imports it from a local checkout (nothing of it is kept in this repository):

  mkdir -p /tmp/drifting_official
  git --git-dir=<bare clone> archive accd0cf09c33b70892d33941d2a287ca86cb92e1 models utils \
      | tar -x -C /tmp/drifting_official
  python scripts/make_drifting_generator_golden.py --official=/tmp/drifting_official \
      --commit=accd0cf09c33b70892d33941d2a287ca86cb92e1

It runs a temporary copy of the checkout in which models/generator.py has one textual patch,
`jnp.float32` -> `jnp.float64`, so the golden outputs are float64 (the parity test can then use a
tight tolerance); the unpatched float32 module is run too and must agree to float32 accuracy,
showing that the patch changes precision only.

The tiny generator has every feature of the released ones (SwiGLU, RMSNorm, QK-norm, RoPE, class
tokens, noise labels, the alpha embedder); its parameters are the official initialisation plus
Gaussian noise (so the zero-initialised adaLN and output layers do something), stored in float32.
Inputs are the noise image, class labels, guidance scales alpha and noise labels; the noise labels
are passed explicitly (the official module otherwise draws them from its 'noise' rng).
Saved: commit, config, params/<path> (the official tree, '/'-joined), inputs/*, output (float64).
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from flax import traverse_util

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(os.path.dirname(HERE), "tests", "golden", "drifting_generator_tiny.npz")
OFFICIAL_COMMIT = "accd0cf09c33b70892d33941d2a287ca86cb92e1"

# The official DitGen fields of the tiny configuration (released ones: see configs/gen/*.yaml).
TINY = dict(cond_dim=32, num_classes=7, noise_classes=5, noise_coords=4, input_size=8,
            in_channels=4, n_cls_tokens=3, patch_size=2, hidden_size=32, depth=2, num_heads=2,
            mlp_ratio=4.0, out_channels=4, use_qknorm=True, use_swiglu=True, use_rope=True,
            use_rmsnorm=True, use_bf16=False, attn_fp32=True, use_remat=False)
BATCH = 3


def git_blob_sha(path: str) -> str:
  data = open(path, "rb").read()
  return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def load_official(official: str, tmp: str, float64: bool):
  """Copies models/ and utils/ to tmp (generator.py patched if float64) and imports DitGen."""
  for sub in ("models", "utils"):
    shutil.copytree(os.path.join(official, sub), os.path.join(tmp, sub))
  if float64:
    path = os.path.join(tmp, "models", "generator.py")
    text = open(path).read()
    if "jnp.float32" not in text:
      raise RuntimeError("patch target 'jnp.float32' not found: is this the expected commit?")
    open(path, "w").write(text.replace("jnp.float32", "jnp.float64"))
  for name in [m for m in sys.modules if m in ("models", "utils") or m.startswith(("models.",
                                                                                      "utils."))]:
    del sys.modules[name]
  sys.path.insert(0, tmp)
  try:
    from utils.hsdp_util import set_global_mesh  # pylint: disable=g-import-not-at-top
    set_global_mesh(1)
    from models.generator import DitGen  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.remove(tmp)
  return DitGen


def flatten(tree, prefix=""):
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flatten(value, f"{prefix}{key}/"))
    else:
      out[f"{prefix}{key}"] = np.asarray(value)
  return out


def unflatten(flat):
  """{"a/b": x} -> {"a": {"b": x}}."""
  return traverse_util.unflatten_dict(flat, sep="/")


def run(DitGen, jax, jnp, params, inputs, dtype):
  model = DitGen(**TINY)

  def forward(module, x, labels, alpha, noise_labels):
    cond = module.c_cfg_noise_to_cond(labels, alpha, noise_labels)
    return module.generate_image(x, cond)

  p = jax.tree_util.tree_map(lambda v: jnp.asarray(v, dtype), params)
  out = model.apply({"params": p}, jnp.asarray(inputs["x"], dtype), jnp.asarray(inputs["labels"]),
                    jnp.asarray(inputs["alpha"], dtype), jnp.asarray(inputs["noise_labels"]),
                    method=forward)
  return np.asarray(out)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--official", required=True, help="local checkout holding models/, utils/")
  parser.add_argument("--commit", default=OFFICIAL_COMMIT, help="the checkout's official commit")
  parser.add_argument("--out", default=DEFAULT_OUT)
  args = parser.parse_args()
  if args.commit != OFFICIAL_COMMIT:
    print(f"warning: commit {args.commit} is not the one this script was written for "
          f"({OFFICIAL_COMMIT}).")
  if os.path.isdir(os.path.join(args.official, ".git")):
    head = subprocess.run(["git", "-C", args.official, "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    if head != args.commit:
      raise SystemExit(f"--official is at {head}, not --commit={args.commit}.")

  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_enable_x64", True)
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  n, size, ch = BATCH, TINY["input_size"], TINY["in_channels"]
  inputs = {"x": rng.normal(size=(n, size, size, ch)),
            "labels": rng.integers(0, TINY["num_classes"], size=(n,)).astype(np.int32),
            "alpha": np.asarray([1.0, 2.3, 3.7]),
            "noise_labels": rng.integers(0, TINY["noise_classes"],
                                         size=(n, TINY["noise_coords"])).astype(np.int32)}

  outputs = {}
  for float64 in (False, True):
    tmp = tempfile.mkdtemp(prefix="drifting_generator_official_")
    try:
      DitGen = load_official(args.official, tmp, float64)
      if not float64:  # Official initialisation plus noise, float32, shared by both runs.
        init = DitGen(**TINY).init({"params": jax.random.key(0), "noise": jax.random.key(1)},
                                   jnp.zeros((1,), jnp.int32), 1.0)["params"]
        flat = {k: (v + 0.3 * rng.normal(size=v.shape)).astype(np.float32)
                for k, v in sorted(flatten(jax.device_get(init)).items())}
        params = unflatten(flat)
      dtype = jnp.float64 if float64 else jnp.float32
      outputs[float64] = run(DitGen, jax, jnp, params, inputs, dtype)
    finally:
      shutil.rmtree(tmp)
  out64, out32 = outputs[True], outputs[False]
  err = float(np.max(np.abs(out32 - out64)) / np.max(np.abs(out64)))
  print(f"float32 vs float64 official output: max relative difference {err:.2e}")
  assert err < 1e-4, err

  record = {"commit": np.asarray(args.commit),
            "generator_blob_sha": np.asarray(git_blob_sha(
                os.path.join(args.official, "models", "generator.py"))),
            "jax_version": np.asarray(jax.__version__),
            "config": np.asarray(json.dumps(TINY, sort_keys=True)),
            "output": out64}
  record.update({f"inputs/{k}": v for k, v in inputs.items()})
  record.update({f"params/{k}": v for k, v in flat.items()})
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  np.savez_compressed(args.out, **record)
  print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes, {len(flat)} parameter arrays), "
        f"official commit {args.commit}; output std {out64.std():.4f}")


if __name__ == "__main__":
  sys.exit(main())
