"""Writes tests/golden/drifting_field.npz: the released drifting loss run on small random features.

The reference is `drift_loss` of the official JAX code of Drifting Models (github.com/lambertae/
drifting), commit accd0cf09c33b70892d33941d2a287ca86cb92e1, file drift_loss.py. This script imports
it from a local checkout (nothing of it is kept in this repository):

  git --git-dir=<bare clone> archive accd0cf09c33b70892d33941d2a287ca86cb92e1 drift_loss.py \
      | tar -x -C /tmp/drifting_official
  python scripts/make_drifting_golden.py --official=/tmp/drifting_official \
      --commit=accd0cf09c33b70892d33941d2a287ca86cb92e1

It loads a temporary copy of drift_loss.py with two textual patches:
  * `jnp.clip(..., a_min=...)` -> `min=` (the keyword was removed from jnp.clip in current JAX);
  * `jnp.float32` -> `jnp.float64` (the function casts everything to float32; the golden values are
    computed in float64 so that the parity test can use a tight tolerance). The float32 version
    (first patch only) is run too and must agree with the float64 one to float32 accuracy, showing
    that the second patch changes precision only.

Inputs are laid out as the official training step feeds the loss: per feature set, generated
features [(label, location), N_gen, C], positives [(label, location), N_pos, C], guidance negatives
[(label, location), N_unc, C] with weights (alpha - 1)(N_gen - 1)/N_unc per label. Outputs per set:
the per-group loss, the info values (mean distance `scale`, raw squared field norm per R), the
gradient of the total loss (sum over sets of the mean over groups) with respect to the generated
features, and the field V = target - gen / s that this gradient implies.
"""
import argparse
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(os.path.dirname(HERE), "tests", "golden", "drifting_field.npz")

N_LABELS, N_GEN, N_POS, N_UNC = 3, 5, 4, 3
# Feature sets: (locations, channels, feature magnitude); magnitudes differ so S differs per set.
FEATURE_SETS = {"loc": (3, 4, 1.0), "global": (1, 6, 10.0), "patch": (2, 2, 0.1)}
CASES = {  # name: (temperatures as in the released configs, guidance scales per label or None)
    "guided": ((0.2, 0.05, 0.02), (1.0, 2.2, 3.7)),
    "plain": ((0.5, 0.05), None),
}


def git_blob_sha(path: str) -> str:
  data = open(path, "rb").read()
  return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def load_patched(official: str, tmp: str, float64: bool):
  """Imports a patched temporary copy of the official drift_loss.py."""
  text = open(os.path.join(official, "drift_loss.py")).read()
  patches = [("a_min=", "min=")] + ([("jnp.float32", "jnp.float64")] if float64 else [])
  for old, new in patches:
    if old not in text:
      raise RuntimeError(f"patch target {old!r} not found: is this the commit the script expects?")
    text = text.replace(old, new)
  name = "official_drift_loss_f64" if float64 else "official_drift_loss_f32"
  path = os.path.join(tmp, name + ".py")
  with open(path, "w") as f:
    f.write(text)
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.drift_loss


def make_inputs(seed: int = 0):
  """Random features per set in the official layout, [(label, location), rows, C]."""
  rng = np.random.default_rng(seed)
  out = {}
  for name, (num_loc, ch, mag) in FEATURE_SETS.items():
    centre = rng.normal(size=(N_LABELS, 1, num_loc, ch)) * 2.0  # Each label its own data.
    pos = centre + rng.normal(size=(N_LABELS, N_POS, num_loc, ch))
    gen = centre + 0.7 + 1.3 * rng.normal(size=(N_LABELS, N_GEN, num_loc, ch))
    unc = 2.0 * rng.normal(size=(N_LABELS, N_UNC, num_loc, ch))
    # 'label rows location channel -> (label location) rows channel', as the official step does.
    to_groups = lambda t: (mag * t).transpose(0, 2, 1, 3).reshape(N_LABELS * num_loc, -1, ch)
    out[name] = {k: to_groups(v) for k, v in (("gen", gen), ("pos", pos), ("unc", unc))}
  return out


def run_case(drift_loss, jnp, jax, inputs, temps, alpha, dtype):
  """Per-set official outputs and the gradient of the total loss with respect to gen."""
  sets = {}
  for name, f in inputs.items():
    num_loc = FEATURE_SETS[name][0]
    kwargs = dict(gen=jnp.asarray(f["gen"], dtype), fixed_pos=jnp.asarray(f["pos"], dtype))
    if alpha is not None:
      w_label = (np.asarray(alpha) - 1.0) * (N_GEN - 1) / N_UNC
      kwargs["fixed_neg"] = jnp.asarray(f["unc"], dtype)
      kwargs["weight_neg"] = jnp.asarray(np.repeat(w_label, num_loc)[:, None]
                                         * np.ones((1, N_UNC)), dtype)
    sets[name] = kwargs

  def total(gens):
    losses = {n: drift_loss(**dict(sets[n], gen=g), R_list=temps) for n, g in gens.items()}
    return sum(l.mean() for l, _ in losses.values()), losses

  gens = {n: s["gen"] for n, s in sets.items()}
  (loss, per_set), grads = jax.value_and_grad(total, has_aux=True)(gens)
  out = {"loss": np.asarray(loss)}
  for name, (group_loss, info) in per_set.items():
    ch = FEATURE_SETS[name][1]
    n_groups = gens[name].shape[0]
    s_in = np.maximum(np.asarray(info["scale"]) / np.sqrt(ch), 1e-3)
    grad = np.asarray(grads[name])
    # d mean_groups(loss_g) / d gen = 2 (gen / s - target) / (s N_gen C n_groups): solve for V.
    field = -grad * s_in * N_GEN * ch * n_groups / 2.0
    out[f"{name}/group_loss"] = np.asarray(group_loss)
    out[f"{name}/grad"] = grad
    out[f"{name}/field"] = field
    out[f"{name}/target"] = np.asarray(gens[name]) / s_in + field
    for key, value in info.items():
      out[f"{name}/info_{key}"] = np.asarray(value)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--official", required=True, help="local checkout holding drift_loss.py")
  parser.add_argument("--commit", default="", help="official commit (read from git if a clone)")
  parser.add_argument("--out", default=DEFAULT_OUT)
  args = parser.parse_args()
  commit = args.commit
  if not commit:
    commit = subprocess.run(["git", "-C", args.official, "rev-parse", "HEAD"], capture_output=True,
                            text=True, check=True).stdout.strip()

  import jax
  jax.config.update("jax_enable_x64", True)
  import jax.numpy as jnp

  tmp = tempfile.mkdtemp(prefix="drifting_official_patched_")
  try:
    loss64 = load_patched(args.official, tmp, float64=True)
    loss32 = load_patched(args.official, tmp, float64=False)
  finally:
    shutil.rmtree(tmp)

  inputs = make_inputs()
  record = {"commit": np.asarray(commit),
            "drift_loss_blob_sha": np.asarray(git_blob_sha(os.path.join(args.official,
                                                                        "drift_loss.py"))),
            "jax_version": np.asarray(jax.__version__),
            "sizes": np.asarray([N_LABELS, N_GEN, N_POS, N_UNC]),
            "feature_sets": np.asarray(list(FEATURE_SETS))}
  for name, f in inputs.items():
    for key, value in f.items():
      record[f"inputs/{name}/{key}"] = value
  for case, (temps, alpha) in CASES.items():
    out64 = run_case(loss64, jnp, jax, inputs, temps, alpha, jnp.float64)
    out32 = run_case(loss32, jnp, jax, inputs, temps, alpha, jnp.float32)
    # The float64 patch must change only the rounding (float32 exponentials of logits up to ~1e2).
    for key in ("loss",) + tuple(f"{n}/field" for n in FEATURE_SETS):
      ref = out64[key]
      err = np.max(np.abs(out32[key] - ref)) / np.max(np.abs(ref))
      print(f"{case} {key}: float32 vs float64 max relative difference {err:.2e}")
      assert err < 1e-3, (case, key, err)
    record[f"{case}/temperatures"] = np.asarray(temps)
    record[f"{case}/alpha"] = np.asarray(alpha if alpha is not None else [1.0] * N_LABELS)
    record[f"{case}/guided"] = np.asarray(alpha is not None)
    for key, value in out64.items():
      record[f"{case}/{key}"] = value
    print(f"{case}: loss {float(out64['loss']):.6f}")
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  np.savez_compressed(args.out, **record)
  print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes), official commit {commit}")


if __name__ == "__main__":
  sys.exit(main())
