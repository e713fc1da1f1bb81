"""Golden file from the official pixel MeanFlow JAX code (Lyy-iiis/pMF), for tests/test_pmf_golden.py.

Runs the official pmf.py, models/ and utils/auxloss_util.py from a temporary copy (nothing of it is
committed here; the copy is not edited) on a tiny pmfDiT with random weights and writes
tests/golden/pmf_official.npz:
  param/<path>   the official network's parameters (names as in the official module tree);
  net_*          inputs and the official (u, v) = net(z, t, h, omega, t_min, t_max, y) (velocities:
                 the official network applies the x-to-u transform itself);
  loss_*         pixelMeanFlow.forward on a fixed batch with chosen draws (served to the official
                 code in place of its jax.random normal / uniform calls, as make_imf_golden.py
                 does), with the perceptual term on: the official paired_random_resized_crop
                 (utils/auxloss_util.py) of pred_x and x on the key the official forward hands to
                 its aux_fn (stored as loss_crop_key, raw key data), then tiny random LPIPS and
                 ConvNeXt-V2 networks (this project's modules, weights stored as lpips/... and
                 convnext/...: the frozen networks are stand-ins here; their own parity is
                 tests/test_lpips.py's); the draws as the official code formed them; loss and its
                 parts;
  grad/<path>    the gradient of that loss with respect to every network parameter;
  sample_*       the official `generate` (1 step) from served noise, scaled by its noise_scale.

The perceptual networks' package (lpips_j) and the logging helper's wandb are not needed and are
stubbed; the crop is the official function itself. norm_p = 0.5 (not the released 1.0) keeps the
loss sensitive to every term with random weights.

  python scripts/make_pmf_golden.py --official_git_dir=/path/to/Lyy-iiis+pMF/repo
"""
import functools
import os
import shutil
import sys
import types

import numpy as np

import official_checkout  # scripts/official_checkout.py (the scripts run as files)
from make_imf_golden import ServedJax, flat, official_draws, random_weights

OFFICIAL_COMMIT = "75f6073042c21f7104686261a0c4784db4ede9d1"  # Lyy-iiis/pMF main.
OFFICIAL_FILES = ("pmf.py", "models/pmfDiT.py", "models/embedder.py", "models/torch_models.py",
                  "models/convnext.py", "utils/auxloss_util.py", "utils/logging_util.py")
TINY = dict(input_size=16, patch_size=4, in_channels=3, hidden_size=16, depth=3, num_heads=2,
            aux_head_depth=2)
NUM_CLASSES = 10
METHOD = dict(P_mean=0.8, P_std=0.8, noise_scale=2.0, data_proportion=0.5, cfg_beta=1.0,
              class_dropout_prob=0.1, norm_p=0.5, norm_eps=0.01, lpips=True, lpips_lambda=0.4,
              convnext=True, convnext_lambda=0.1, perceptual_max_t=0.8)
CROP = 32  # The crop size of the golden (the official code uses 224 for its full-size networks).
LPIPS_TINY = dict(depths=(1, 1, 1, 1, 1), widths=(4, 4, 6, 6, 8))
CONVNEXT_TINY = dict(depths=(1, 1, 1, 1), dims=(8, 8, 8, 8))
BATCH = 8
NUM_DROPPED = 2
SAMPLING = (8.5, 0.1, 0.7)  # omega, t_min, t_max.


def choose_draws(rng):
  """Served values: rows 4..7 have r != t, some inside their interval and some not; some rows
  have t < perceptual_max_t and some not."""
  b = BATCH
  sig = lambda n: 1 / (1 + np.exp(-(METHOD["P_std"] * n + METHOD["P_mean"])))
  while True:
    n_t, n_r = rng.randn(b, 1, 1, 1), rng.randn(b, 1, 1, 1)
    a, c = sig(n_t), sig(n_r)
    t = np.where(np.arange(b)[:, None, None, None] < b // 2, a, np.maximum(a, c))
    lo, hi = 0.5 * rng.rand(b, 1, 1, 1), 0.5 + 0.5 * rng.rand(b, 1, 1, 1)
    inside = ((t >= lo) & (t <= hi)).ravel()[b // 2:]
    masked = (t < METHOD["perceptual_max_t"]).ravel()
    if inside.any() and not inside.all() and masked.any() and not masked.all():
      break
  drop = np.concatenate([0.1 * rng.rand(NUM_DROPPED), 0.1 + 0.9 * rng.rand(b - NUM_DROPPED)])
  return dict(normal_t=n_t, normal_r=n_r, t_min=lo, t_max=hi, omega_u=rng.rand(b, 1, 1, 1),
              drop_u=rng.permutation(drop))


def main():
  args = official_checkout.parse_args(__doc__.splitlines()[0], "Lyy-iiis/pMF", OFFICIAL_COMMIT,
                                      "pmf_official.npz")
  tmp, commit = official_checkout.temporary_copy(OFFICIAL_FILES, args, "pmf_official_")
  print(f"official commit {commit} (unedited copy in {tmp})")
  official_checkout.stub_pmf_unused_modules()
  sys.path.insert(0, tmp)
  import jax
  import jax.numpy as jnp
  import pmf as official  # pylint: disable=import-error
  from models import pmfDiT  # pylint: disable=import-error
  from utils import auxloss_util  # pylint: disable=import-error
  sys.path.insert(0, official_checkout.ROOT)  # This project's modules (the frozen stand-ins).
  from mf_jax.models import convnext, lpips

  pmfDiT.pmfDiT_golden_tiny = functools.partial(pmfDiT.pmfDiT, **TINY)
  served = ServedJax(jax)
  official.jax = served
  model = official.pixelMeanFlow(model_str="pmfDiT_golden_tiny", num_classes=NUM_CLASSES, **METHOD)
  size, ch = TINY["input_size"], TINY["in_channels"]
  variables = model.init({"params": jax.random.key(0)}, jnp.ones((1, size, size, ch)),
                         jnp.ones((1,)), jnp.ones((1,), jnp.int32))
  params = random_weights(variables["params"], jax.random.key(1), jax)
  variables = {"params": params}
  gen = {"gen": jax.random.key(2)}
  rng = np.random.RandomState(0)
  golden = dict(official_commit=np.array(commit), num_classes=np.array(NUM_CLASSES),
                batch=np.array(BATCH), crop=np.array(CROP))
  golden.update({f"tiny_{k}": np.array(v) for k, v in TINY.items()})
  golden.update({f"method_{k}": np.array(v) for k, v in METHOD.items()})
  golden.update(flat(params["net"], "param"))

  # The frozen stand-ins: tiny random LPIPS and ConvNeXt-V2 of this project.
  lpips_net, convnext_net = lpips.LPIPS(**LPIPS_TINY), convnext.ConvNeXtV2(**CONVNEXT_TINY)
  crop_example = jnp.zeros((1, CROP, CROP, 3))
  lpips_vars = random_weights(lpips_net.init(jax.random.key(3), crop_example, crop_example),
                              jax.random.key(4), jax)
  convnext_vars = random_weights(convnext_net.init(jax.random.key(5), crop_example),
                                 jax.random.key(6), jax)
  golden.update(flat(lpips_vars, "lpips"))
  golden.update(flat(convnext_vars, "convnext"))
  captured = {}

  def aux_fn(pred_x, x, key):
    captured["crop_key"] = np.asarray(jax.random.key_data(key))
    a, b = auxloss_util.paired_random_resized_crop(key, pred_x, x, out_size=CROP)
    d_lpips = lpips_net.apply(lpips_vars, a, b).reshape(-1)
    f = lambda im: convnext_net.apply(convnext_vars, im, features=False)
    return d_lpips, jnp.sum((f(a) - f(b)) ** 2, axis=-1)

  # 1. The network: (u, v) on fixed inputs (h = 0, h = t and others; the null label included).
  n = 5
  f32 = lambda a: np.asarray(a, np.float32)
  net_in = dict(z=f32(2 * rng.randn(n, size, size, ch)), t=f32([0.9, 0.5, 0.3, 1.0, 0.03]),
                h=f32([0.0, 0.5, 0.1, 1.0, 0.02]), omega=f32([1.0, 2.5, 8.0, 4.0, 1.5]),
                t_min=f32([0.0, 0.2, 0.45, 0.36, 0.1]), t_max=f32([1.0, 0.6, 0.9, 0.64, 0.55]),
                y=np.array([3, 10, 0, 7, 9], np.int32))
  u, v = model.apply(variables, *net_in.values(), method=model.u_fn)
  golden.update({f"net_{k}": a for k, a in net_in.items()})
  golden.update(net_u=np.asarray(u), net_v=np.asarray(v))

  # 2. The loss, its gradient and the draws as the official code forms them.
  x = f32(np.tanh(rng.randn(BATCH, size, size, ch)))
  labels = rng.randint(0, NUM_CLASSES, BATCH).astype(np.int32)
  d = choose_draws(rng)
  e = f32(rng.randn(BATCH, size, size, ch))  # Standard normal; the official code scales it.
  normals = [d["normal_t"], d["normal_r"], e]
  uniforms = [d["t_min"], d["t_max"], d["omega_u"], d["drop_u"]]

  t, r, t_min, t_max, omega, dropped_labels = official_draws(model, variables, served, gen, d, e,
                                                              labels, jnp)

  def loss_fn(p):
    served.serve(normal=normals, uniform=uniforms)
    loss, metrics = model.apply({"params": p}, jnp.asarray(x), jnp.asarray(labels), aux_fn,
                                method=model.forward, rngs=gen)
    assert not served.queues["normal"] and not served.queues["uniform"], "draws left over"
    return loss, metrics
  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  squeeze = lambda a: np.asarray(a, np.float32).reshape(BATCH)
  golden.update(loss_x=x, loss_labels=labels, loss_e=e * np.float32(METHOD["noise_scale"]),
                loss_t=squeeze(t), loss_r=squeeze(r), loss_omega=squeeze(omega),
                loss_t_min=squeeze(t_min), loss_t_max=squeeze(t_max),
                loss_dropped=np.asarray(dropped_labels) == NUM_CLASSES,
                loss_crop_key=captured["crop_key"], loss=np.asarray(loss),
                **{f"loss_{k}": np.asarray(metrics[k]) for k in
                   ("loss_u", "loss_v", "aux_loss_lpips", "aux_loss_convnext")})
  golden.update(flat(grads["net"], "grad"))
  print(f"loss {float(loss):.6f}; " + ", ".join(f"{k} {float(v):.6f}" for k, v in metrics.items())
        + f"; dropped rows {np.flatnonzero(golden['loss_dropped']).tolist()}; r != t rows "
        f"{np.flatnonzero(golden['loss_t'] != golden['loss_r']).tolist()}")

  # 3. Samples: the official generate (1 step) with its noise scale.
  config = types.SimpleNamespace(dataset=types.SimpleNamespace(
      num_classes=NUM_CLASSES, image_size=size, image_channels=ch))
  n_sample = 4
  w, lo, hi = SAMPLING
  noise = f32(rng.randn(n_sample, size, size, ch))
  served.serve(normal=[noise])
  images = official.generate(variables, model, jax.random.key(7), n_sample, config, 1, w, lo, hi,
                             sample_idx=1)
  golden.update(sample_noise=noise, sample_omega=np.array(w), sample_t_min=np.array(lo),
                sample_t_max=np.array(hi),
                sample_labels=(np.arange(n_sample) + n_sample) % NUM_CLASSES,
                sample=np.asarray(images))

  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  np.savez_compressed(args.out, **golden)
  print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes, {len(golden)} arrays)")
  shutil.rmtree(tmp)


if __name__ == "__main__":
  main()
