"""Writes tests/golden/drifting_mae.npz and drifting_convnext.npz: the released feature encoders on
tiny configurations with deterministic weights, plus the parameter counts of the released sizes.

The reference is the official JAX code of Drifting Models (github.com/lambertae/drifting), commit
accd0cf09c33b70892d33941d2a287ca86cb92e1: models/mae_model.py (MAEResNetJAX) and models/convnext.py
(ConvNextV2, used by the pixel configs: configs/gen/pixel_sota_*.yaml set feature.use_convnext).
This script imports them from a local checkout (nothing of it is kept in this repository):

  git --git-dir=<bare clone> archive accd0cf09c33b70892d33941d2a287ca86cb92e1 models utils \
      | tar -x -C /tmp/drifting_official
  python scripts/make_drifting_encoder_golden.py --official=/tmp/drifting_official \
      --commit=accd0cf09c33b70892d33941d2a287ca86cb92e1

It runs a temporary copy of the checkout with one textual patch: `jnp.float32` -> `jnp.float64` in
the two model files (their compute dtype and statistics), so the golden values are float64 and the
parity test can use a tight tolerance; the unpatched float32 code is run too and must agree to
float32 accuracy, showing that the patch changes precision only.

Weights: every leaf of the official parameter tree gets the values k / 1024 * 2^-e with
k = ((7919 i + 31 j) mod 257) - 128 (i the position in the leaf, j the leaf's index in sorted path
order) and 2^-e the power of two nearest 1/sqrt(fan-in) for kernels (norm scales get 1 + k / 1024).
They are exact in float16, stored that way under params/<official path>. Outputs are computed in
float64 and stored as float32 (a relative rounding of < 1e-7, far below the tests' 1e-5).

MAE cases run MAEResNetJAX.get_activations with the released activation arguments (patch sizes
[2, 4], mean and std, every 2nd block), and the encoder-decoder-classifier on a masked input.
ConvNeXt runs get_activations after the release's pixel preprocessing ((x + 1) / 2, ImageNet
mean/std), as its feature function does for generator outputs in [-1, 1].
"""
import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from flax import traverse_util

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(os.path.dirname(HERE), "tests", "golden")
PATCHED = ("models/mae_model.py", "models/convnext.py")

# name: (in_channels, input_patch_size, image size, base width, layers)
MAE_CASES = {"latent": (4, 1, 8, 32, (3, 2, 1, 1)), "pixel": (3, 2, 16, 32, (1, 2, 1, 1))}
RELEASED_MAE = {"mae_latent_256": (4, 1, 256), "mae_latent_640": (4, 1, 640),
                "mae_pixel_640": (3, 8, 640)}
CONVNEXT_TINY = dict(depths=(1, 1, 2, 1), dims=(8, 16, 32, 64), num_classes=10)
BATCH = 2


def git_blob_sha(path: str) -> str:
  data = open(path, "rb").read()
  return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def patched_copy(official: str, tmp: str, float64: bool) -> str:
  dst = os.path.join(tmp, "f64" if float64 else "f32")
  for sub in ("models", "utils"):
    shutil.copytree(os.path.join(official, sub), os.path.join(dst, sub))
  if float64:
    for rel in PATCHED:
      path = os.path.join(dst, rel)
      text = open(path).read()
      if "jnp.float32" not in text:
        raise RuntimeError(f"patch target jnp.float32 not in {rel}: is this the expected commit?")
      open(path, "w").write(text.replace("jnp.float32", "jnp.float64"))
  return dst


def import_official(root: str):
  """(mae_model, convnext, hsdp_util) modules of one copy; earlier copies are dropped first."""
  for name in list(sys.modules):
    if name.split(".")[0] in ("models", "utils"):
      del sys.modules[name]
  sys.path.insert(0, root)
  try:
    from models import convnext, mae_model  # pylint: disable=g-import-not-at-top
    from utils import hsdp_util  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.remove(root)
  hsdp_util.set_global_mesh(1)
  return mae_model, convnext, hsdp_util


def flat_paths(tree, prefix=""):
  out = {}
  for key in sorted(tree):
    value = tree[key]
    path = f"{prefix}{key}"
    if hasattr(value, "keys"):
      out.update(flat_paths(value, path + "/"))
    else:
      out[path] = value
  return out


def unflatten(flat):
  """{"a/b": x} -> {"a": {"b": x}}."""
  return traverse_util.unflatten_dict(flat, sep="/")


def deterministic_weights(shapes):
  """{path: float16-exact array} for {path: shape} (see the module docstring)."""
  out = {}
  for j, (path, shape) in enumerate(sorted(shapes.items())):
    size = int(np.prod(shape))
    k = ((7919 * np.arange(size, dtype=np.int64) + 31 * j) % 257 - 128).astype(np.float64) / 1024
    leaf = path.rsplit("/", 1)[-1]
    if leaf in ("scale", "weight", "gamma") and len(shape) <= 4 and size == shape[-1]:
      values = 1.0 + k if leaf != "gamma" else k
    elif len(shape) >= 2:
      fan_in = int(np.prod(shape[:-1]))
      values = k * 2.0 ** -round(np.log2(np.sqrt(fan_in)))
    else:
      values = k / 4
    out[path] = values.reshape(shape).astype(np.float16)
  return out


def released_param_counts(mae_model, jax):
  counts = {}
  for name, (ch, p, width) in RELEASED_MAE.items():
    model = mae_model.MAEResNetJAX(num_classes=1000, in_channels=ch, base_channels=width,
                                   layers=(3, 4, 6, 3), patch_size=2, use_bf16=True,
                                   input_patch_size=p)
    rngs = {n: jax.random.key(i) for i, n in enumerate(("params", "masking", "dropout"))}
    shapes = jax.eval_shape(lambda m=model: m.init(rngs, **m.dummy_input()))
    counts[name] = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(shapes))
  return counts


def run_mae(mae_model, jax, jnp, dtype, case, weights=None):
  ch, p, size, width, layers = MAE_CASES[case]
  model = mae_model.MAEResNetJAX(num_classes=10, in_channels=ch, base_channels=width,
                                 layers=layers, patch_size=2, input_patch_size=p)
  rng = np.random.default_rng(list(MAE_CASES).index(case))
  x = rng.normal(size=(BATCH, size, size, ch)).astype(np.float32)
  cells = rng.uniform(size=(BATCH, size // (2 * p), size // (2 * p))) < 0.5
  mask = np.repeat(np.repeat(cells, 2 * p, axis=1), 2 * p, axis=2)[..., None]  # Input resolution.
  if weights is None:
    rngs = {n: jax.random.key(i) for i, n in enumerate(("params", "masking", "dropout"))}
    shapes = jax.eval_shape(lambda: model.init(rngs, **model.dummy_input()))
    weights = deterministic_weights({k: v.shape for k, v in flat_paths(shapes["params"]).items()})
  params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), unflatten(weights))
  feats = model.apply({"params": params}, jnp.asarray(x, dtype), method=model.get_activations)

  def masked_forward(m, x, hidden):
    xp = mae_model.patch_input(x, p)
    feats = m.encoder(xp * (1.0 - hidden), train=False)
    return m.decoder(feats), m.fc(jnp.mean(feats["layer4"], axis=(1, 2)))
  recon, logits = model.apply({"params": params}, jnp.asarray(x, dtype),
                              jnp.asarray(mask[:, ::p, ::p], dtype), method=masked_forward)
  out = {f"features/{k}": np.asarray(v) for k, v in feats.items()}
  out.update({"recon": np.asarray(recon), "logits": np.asarray(logits)})
  return {"x": x, "mask": mask}, weights, out


def run_convnext(convnext, jax, jnp, dtype, weights=None):
  model = convnext.ConvNextV2(dtype=dtype, **CONVNEXT_TINY)
  x = np.random.default_rng(7).uniform(-1.2, 1.2, size=(BATCH, 32, 32, 3)).astype(np.float32)
  if weights is None:
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 224, 224, 3)))
    weights = deterministic_weights({k: v.shape for k, v in flat_paths(shapes["params"]).items()})
  params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), unflatten(weights))
  pixels = (jnp.asarray(x, dtype) + 1) / 2  # The release's postprocess (NCHW there, then back).
  pixels = (pixels - jnp.array([0.485, 0.456, 0.406])) / jnp.array([0.229, 0.224, 0.225])
  feats = model.apply({"params": params}, pixels.astype(dtype), method=model.get_activations)
  return x, weights, {f"features/{k}": np.asarray(v) for k, v in feats.items()}


def max_rel(a, b):
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--official", required=True, help="local checkout holding models/, utils/")
  parser.add_argument("--commit", default="", help="official commit (read from git if a clone)")
  parser.add_argument("--out_dir", default=GOLDEN)
  args = parser.parse_args()
  commit = args.commit or subprocess.run(
      ["git", "-C", args.official, "rev-parse", "HEAD"], capture_output=True, text=True,
      check=True).stdout.strip()

  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_enable_x64", True)
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  meta = {"commit": np.asarray(commit), "jax_version": np.asarray(jax.__version__)}
  for rel in PATCHED:
    meta[f"blob_sha/{rel}"] = np.asarray(git_blob_sha(os.path.join(args.official, rel)))
  tmp = tempfile.mkdtemp(prefix="drifting_official_encoders_")
  try:
    mae32, convnext32, _ = import_official(patched_copy(args.official, tmp, float64=False))
    counts = released_param_counts(mae32, jax)
    ref32 = {case: run_mae(mae32, jax, jnp, jnp.float32, case) for case in MAE_CASES}
    conv32 = run_convnext(convnext32, jax, jnp, jnp.float32)
    mae64, convnext64, _ = import_official(patched_copy(args.official, tmp, float64=True))
    mae_record, conv_record = dict(meta), dict(meta)
    for name, n in counts.items():
      mae_record[f"param_count/{name}"] = np.asarray(n)
      print(f"release {name}: {n} parameters")
    for case in MAE_CASES:
      inputs, weights, out32 = ref32[case]
      _, _, out64 = run_mae(mae64, jax, jnp, jnp.float64, case, weights)
      worst = max(max_rel(out32[k], out64[k]) for k in out64)
      print(f"mae {case}: {len(out64) - 2} feature sets; float32 vs float64 max rel {worst:.2e}")
      assert worst < 1e-3, (case, worst)
      mae_record[f"{case}/config"] = np.asarray(MAE_CASES[case][:4] + tuple(MAE_CASES[case][4]))
      mae_record.update({f"{case}/{k}": v for k, v in inputs.items()})
      mae_record.update({f"{case}/params/{k}": v for k, v in weights.items()})
      mae_record.update({f"{case}/{k}": v.astype(np.float32) for k, v in out64.items()})
    x, weights, out32 = conv32
    _, _, out64 = run_convnext(convnext64, jax, jnp, jnp.float64, weights)
    worst = max(max_rel(out32[k], out64[k]) for k in out64)
    print(f"convnext: {len(out64)} feature sets; float32 vs float64 max rel {worst:.2e}")
    assert worst < 1e-3, worst
    conv_record["config/depths"] = np.asarray(CONVNEXT_TINY["depths"])
    conv_record["config/dims"] = np.asarray(CONVNEXT_TINY["dims"])
    conv_record["config/num_classes"] = np.asarray(CONVNEXT_TINY["num_classes"])
    conv_record["x"] = x
    conv_record.update({f"params/{k}": v for k, v in weights.items()})
    conv_record.update({k: v.astype(np.float32) for k, v in out64.items()})
  finally:
    shutil.rmtree(tmp)
  os.makedirs(args.out_dir, exist_ok=True)
  for name, record in (("drifting_mae.npz", mae_record), ("drifting_convnext.npz", conv_record)):
    path = os.path.join(args.out_dir, name)
    np.savez_compressed(path, **record)
    print(f"wrote {path} ({os.path.getsize(path)} bytes), official commit {commit}")


if __name__ == "__main__":
  sys.exit(main())
