"""Golden file of the official pMF network (Lyy-iiis/pMF models/pmfDiT.py), for
tests/test_pmf_network.py and tests/test_pmf_convert.py.

Runs the official models/ from a temporary, unedited copy on a tiny pmfDiT with random weights and
writes tests/golden/pmf_network.npz:
  param/<path>   the official network's parameters (names as in the official module tree, below
                 `net`);
  net_*          inputs (z, t, h, omega, t_min, t_max, y) and the official outputs:
                 net_x_u, net_x_v  the heads' images (the final layers' patch outputs, unpatchified
                                   by the official module's own unpatchify), before its x -> u step;
                 net_u, net_v      the official (u, v) = pmfDiT(z, t, h, omega, t_min, t_max, y),
                                   i.e. (z - x) / clip(t, 0.05, 1);
  torch_state    "key shape" lines of the state dict of the same tiny network in the official
                 PyTorch branch (models/pmfDiT.py at TORCH_COMMIT, training form): the names and
                 shapes a .pt release has (with --official_git_dir only).

The official module is run as it is; the heads' images are read with Flax's
capture_intermediates (the output of u_final_layer / v_final_layer), not recomputed.
`official_tiny(folder)` builds the official tiny pmfDiT and its parameters for other golden
scripts (the pMF objective's loss, gradient and samples).

  python scripts/make_pmf_network_golden.py --official_git_dir=/path/to/Lyy-iiis+pMF/repo
  python scripts/make_pmf_network_golden.py --official_dir=/path/to/checkout --commit=<sha>
"""
import os
import shutil
import sys
import tempfile

import numpy as np

import official_checkout  # scripts/official_checkout.py (the scripts run as files)
from make_imf_golden import flat, random_weights  # As the iMF golden file.

OFFICIAL_COMMIT = "75f6073042c21f7104686261a0c4784db4ede9d1"  # Lyy-iiis/pMF main.
TORCH_COMMIT = "990e81a84249dbd68a128accef67eb95621d10b1"  # Lyy-iiis/pMF torch (its .pt release).
OFFICIAL_FILES = ("models/pmfDiT.py", "models/embedder.py", "models/torch_models.py")
# The tiny network (official pmfDiT fields): a 6 x 6 patch grid (rows and columns distinct from
# the prefix length), head width 8 (2 rotary frequencies per axis: rows and columns differ).
TINY = dict(input_size=12, patch_size=2, in_channels=3, hidden_size=16, depth=3, num_heads=2,
            aux_head_depth=2)
NUM_CLASSES = 10


def official_tiny(folder, key_seed=1):
  """(the official tiny pmfDiT (training form, eval=False), its random parameters (the network's
  own tree, as stored below `net` by the official trainer), the official models.pmfDiT module)
  from the official files copied into `folder`."""
  if folder not in sys.path:
    sys.path.insert(0, folder)
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from models import pmfDiT  # pylint: disable=import-error,import-outside-toplevel
  net = pmfDiT.pmfDiT(num_classes=NUM_CLASSES, **TINY)
  size, ch = TINY["input_size"], TINY["in_channels"]
  one = jnp.ones((1,))
  variables = net.init(jax.random.key(0), jnp.ones((1, size, size, ch)), one, one, one, one, one,
                       jnp.ones((1,), jnp.int32))
  params = random_weights(variables["params"], jax.random.key(key_seed), jax)
  return net, params, pmfDiT


def official_images(net, params, inputs):
  """(x_u, x_v, u, v) of the official network: the final layers' outputs unpatchified by the
  official module, and its returned velocities."""
  (u, v), state = net.apply({"params": params}, *inputs, capture_intermediates=True)
  unpatchify = lambda name: net.apply({"params": params}, state["intermediates"][name][
      "__call__"][0], method=net.unpatchify)
  return unpatchify("u_final_layer"), unpatchify("v_final_layer"), u, v


def official_torch_state(official_git_dir, commit=TORCH_COMMIT):
  """["key shape", ...] of the official PyTorch tiny pmfDiT's state_dict (eval_mode=False)."""
  tmp = tempfile.mkdtemp(prefix="pmf_official_torch_")
  saved = {k: sys.modules.pop(k) for k in list(sys.modules) if k == "models"
           or k.startswith("models.")}
  sys.path.insert(0, tmp)
  try:
    official_checkout.extract(OFFICIAL_FILES, tmp, official_git_dir, commit=commit)
    from models import pmfDiT  # pylint: disable=import-error,import-outside-toplevel
    net = pmfDiT.pmfDiT(num_classes=NUM_CLASSES, eval_mode=False, **TINY)
    return [f"{k} {tuple(v.shape)}" for k, v in net.state_dict().items()]
  finally:
    sys.path.remove(tmp)
    for k in [k for k in sys.modules if k == "models" or k.startswith("models.")]:
      del sys.modules[k]
    sys.modules.update(saved)
    shutil.rmtree(tmp)


def main():
  args = official_checkout.parse_args(__doc__.splitlines()[0], "Lyy-iiis/pMF", OFFICIAL_COMMIT,
                                      "pmf_network.npz")
  tmp, commit = official_checkout.temporary_copy(OFFICIAL_FILES, args, "pmf_official_")
  print(f"official commit {commit} (unedited copy in {tmp})")
  net, params, _ = official_tiny(tmp)
  size, ch = TINY["input_size"], TINY["in_channels"]
  golden = dict(official_commit=np.array(commit), num_classes=np.array(NUM_CLASSES))
  golden.update({f"tiny_{k}": np.array(v) for k, v in TINY.items()})
  golden.update(flat(params, "param"))

  # Inputs: t below the 0.05 clip, at 1 and between; h = 0 and h = t; the null label.
  rng = np.random.RandomState(0)
  f32 = lambda a: np.asarray(a, np.float32)
  net_in = dict(z=f32(rng.randn(5, size, size, ch)), t=f32([0.9, 0.5, 0.03, 1.0, 0.7]),
                h=f32([0.0, 0.5, 0.01, 1.0, 0.35]), omega=f32([1.0, 2.5, 8.0, 4.0, 1.5]),
                t_min=f32([0.0, 0.2, 0.45, 0.36, 0.1]), t_max=f32([1.0, 0.6, 0.9, 0.64, 0.55]),
                y=np.array([3, 10, 0, 7, 9], np.int32))
  x_u, x_v, u, v = official_images(net, params, tuple(net_in.values()))
  golden.update({f"net_{k}": a for k, a in net_in.items()})
  golden.update({f"net_{k}": np.asarray(a) for k, a in
                 dict(x_u=x_u, x_v=x_v, u=u, v=v).items()})
  print(f"|x_u| {np.abs(golden['net_x_u']).mean():.4f}, |x_v| "
        f"{np.abs(golden['net_x_v']).mean():.4f}")

  if args.official_git_dir:
    golden["torch_state"] = np.array(official_torch_state(args.official_git_dir))
    print(f"official torch commit {TORCH_COMMIT}: {len(golden['torch_state'])} state dict keys")

  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  np.savez_compressed(args.out, **golden)
  print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes, {len(golden)} arrays)")
  shutil.rmtree(tmp)


if __name__ == "__main__":
  main()
