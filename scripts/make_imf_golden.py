"""Golden file from the official iMF JAX code (Lyy-iiis/imeanflow), for tests/test_imf_golden.py.

Runs the official imf.py and models/ from a temporary copy (nothing of it is committed here; the
copy is not edited) on a tiny imfDiT with random weights and writes tests/golden/imf_official.npz:
  param/<path>   the official network's parameters (names as in the official module tree);
  net_*          inputs and the official (u, v) = net(z, t, h, omega, t_min, t_max, y);
  loss_*         iMeanFlow.forward on a fixed batch with chosen draws: the times (from the two
                 logit-normal normals), noise, guidance interval, omega and dropout uniforms are
                 served to the official code in place of its jax.random draws; the draws as the
                 official code turned them into t, r, omega (and the uniform it came from),
                 t_min, t_max and dropped rows (read back by running its own draw methods on the
                 same served values); loss, loss_u, loss_v;
  grad/<path>    the gradient of that loss with respect to every parameter;
  sample{1,2}_*  the official `generate` (1 and 2 steps) from served noise, with the labels it
                 cycles and the (omega, t_min, t_max) chosen at sampling time.

The official module's `jax` name is swapped for a thin stand-in (ServedJax) that returns queued
values from jax.random.normal / uniform (shapes checked against the requested ones); everything
else is the real jax. norm_p = 0.5 (not the released 1.0) keeps the golden loss sensitive: with
random weights the per-sample errors are large and d / (d + 0.01) would sit at 1.

  python scripts/make_imf_golden.py --official_git_dir=/path/to/Lyy-iiis+imeanflow/repo
  python scripts/make_imf_golden.py --official_dir=/path/to/checkout --commit=<sha>
"""
import functools
import os
import shutil
import sys
import types

import numpy as np

import official_checkout  # scripts/official_checkout.py (the scripts run as files)

OFFICIAL_COMMIT = "bf60cd7cb653f6628e59d48034b333c5eba445e2"  # Lyy-iiis/imeanflow main.
OFFICIAL_FILES = ("imf.py", "models/imfDiT.py", "models/embedder.py", "models/torch_models.py")
# The tiny network (official imfDiT fields) and the objective's settings (iMeanFlow fields).
TINY = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=16, depth=3, num_heads=2,
            aux_head_depth=2)
NUM_CLASSES = 10
METHOD = dict(P_mean=-0.4, P_std=1.0, data_proportion=0.5, cfg_beta=1.0, class_dropout_prob=0.1,
              norm_p=0.5, norm_eps=0.01)
BATCH = 8
NUM_DROPPED = 2
SAMPLING = {1: (8.0, 0.40, 0.65), 2: (4.0, 0.36, 0.64)}  # steps: (omega, t_min, t_max).


class ServedJax(types.SimpleNamespace):
  """The official imf.py's `jax`: random.normal / uniform return queued values, the rest is jax."""

  def __init__(self, real_jax):
    super().__init__()
    self._real = real_jax
    self.queues = {"normal": [], "uniform": []}
    self.random = types.SimpleNamespace(normal=functools.partial(self._serve, "normal"),
                                        uniform=functools.partial(self._serve, "uniform"),
                                        split=real_jax.random.split,
                                        randint=real_jax.random.randint)

  def __getattr__(self, name):
    return getattr(self._real, name)

  def serve(self, normal=(), uniform=()):
    self.queues = {"normal": list(normal), "uniform": list(uniform)}

  def _serve(self, name, key, shape=(), dtype=None, **kwargs):
    assert self.queues[name], f"unexpected jax.random.{name}{tuple(shape)} in the official code"
    value = self._real.numpy.asarray(self.queues[name].pop(0), np.float32)
    assert value.shape == tuple(shape), (name, value.shape, shape)
    return value


def random_weights(params, key, jax):
  """Each leaf plus noise: 0.3 N(0, 1) for vectors, N(0, 1) / sqrt(fan_in) for matrices, so the
  zero-initialised gates and output layers take part."""
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(key, len(leaves))
  out = []
  for p, k in zip(leaves, keys):
    scale = 0.3 if p.ndim == 1 else 1.0 / np.sqrt(np.prod(p.shape[:-1]))
    out.append(p + scale * jax.random.normal(k, p.shape, p.dtype))
  return jax.tree_util.tree_unflatten(treedef, out)


def choose_draws(rng):
  """Served values: rows 4..7 have r != t, and some of them lie inside their interval, some not."""
  b = BATCH
  while True:
    n_t, n_r = rng.randn(b, 1, 1, 1), rng.randn(b, 1, 1, 1)
    a, c = (1 / (1 + np.exp(-(METHOD["P_std"] * n + METHOD["P_mean"]))) for n in (n_t, n_r))
    t = np.maximum(a, c)
    lo, hi = 0.5 * rng.rand(b, 1, 1, 1), 0.5 + 0.5 * rng.rand(b, 1, 1, 1)
    inside = ((t >= lo) & (t <= hi)).ravel()[b // 2:]
    if inside.any() and not inside.all():
      break
  drop = np.concatenate([0.1 * rng.rand(NUM_DROPPED), 0.1 + 0.9 * rng.rand(b - NUM_DROPPED)])
  return dict(normal_t=n_t, normal_r=n_r, t_min=lo, t_max=hi, omega_u=rng.rand(b, 1, 1, 1),
              drop_u=rng.permutation(drop))


def official_draws(model, variables, served, gen, draws, e, labels, jnp):
  """(t, r, t_min, t_max, omega, labels after dropout) as the official module's own draw methods
  form them from the served values of choose_draws (iMF's and pMF's modules share them)."""
  batch = len(labels)
  served.serve(normal=[draws["normal_t"], draws["normal_r"]])
  t, r, fm_mask = model.apply(variables, batch, method=model.sample_tr, rngs=gen)
  served.serve(uniform=[draws["t_min"], draws["t_max"]])
  t_min, t_max = model.apply(variables, batch, fm_mask, method=model.sample_cfg_interval, rngs=gen)
  served.serve(uniform=[draws["omega_u"]])
  omega = model.apply(variables, batch, method=model.sample_cfg_scale, rngs=gen)
  served.serve(uniform=[draws["drop_u"]])
  dropped_labels, _ = model.apply(variables, jnp.asarray(e), jnp.asarray(e), jnp.asarray(labels),
                                  method=model.cond_drop, rngs=gen)
  return t, r, t_min, t_max, omega, dropped_labels


def flat(tree, prefix):
  from flax import traverse_util
  return {f"{prefix}/{k}": np.asarray(v) for k, v in
          traverse_util.flatten_dict(dict(tree), sep="/").items()}


def main():
  args = official_checkout.parse_args(__doc__.splitlines()[0], "Lyy-iiis/imeanflow",
                                      OFFICIAL_COMMIT, "imf_official.npz")
  tmp, commit = official_checkout.temporary_copy(OFFICIAL_FILES, args, "imf_official_")
  print(f"official commit {commit} (unedited copy in {tmp})")
  sys.path.insert(0, tmp)
  import jax
  import jax.numpy as jnp
  import imf as official  # pylint: disable=import-error
  from models import imfDiT  # pylint: disable=import-error

  imfDiT.imfDiT_golden_tiny = functools.partial(imfDiT.imfDiT, **TINY)
  served = ServedJax(jax)
  official.jax = served
  model = official.iMeanFlow(model_str="imfDiT_golden_tiny", num_classes=NUM_CLASSES, **METHOD)
  size, ch = TINY["input_size"], TINY["in_channels"]
  variables = model.init({"params": jax.random.key(0)}, jnp.ones((1, size, size, ch)),
                         jnp.ones((1,)), jnp.ones((1,), jnp.int32))
  params = random_weights(variables["params"], jax.random.key(1), jax)
  variables = {"params": params}
  gen = {"gen": jax.random.key(2)}
  rng = np.random.RandomState(0)
  golden = dict(official_commit=np.array(commit), num_classes=np.array(NUM_CLASSES),
                batch=np.array(BATCH))
  golden.update({f"tiny_{k}": np.array(v) for k, v in TINY.items()})
  golden.update({f"method_{k}": np.array(v) for k, v in METHOD.items()})
  golden.update(flat(params["net"], "param"))

  # 1. The network: (u, v) on fixed inputs (h = 0, h = t and others; the null label included).
  n = 5
  f32 = lambda a: np.asarray(a, np.float32)
  net_in = dict(z=f32(rng.randn(n, size, size, ch)), t=f32([0.9, 0.5, 0.3, 1.0, 0.7]),
                h=f32([0.0, 0.5, 0.1, 1.0, 0.35]), omega=f32([1.0, 2.5, 8.0, 4.0, 1.5]),
                t_min=f32([0.0, 0.2, 0.45, 0.36, 0.1]), t_max=f32([1.0, 0.6, 0.9, 0.64, 0.55]),
                y=np.array([3, 10, 0, 7, 9], np.int32))
  u, v = model.apply(variables, *net_in.values(), method=model.u_fn)
  golden.update({f"net_{k}": a for k, a in net_in.items()})
  golden.update(net_u=np.asarray(u), net_v=np.asarray(v))

  # 2. The loss, its gradient and the draws as the official code forms them.
  x = f32(rng.randn(BATCH, size, size, ch))
  labels = rng.randint(0, NUM_CLASSES, BATCH).astype(np.int32)
  d = choose_draws(rng)
  e = f32(rng.randn(BATCH, size, size, ch))
  normals = [d["normal_t"], d["normal_r"], e]
  uniforms = [d["t_min"], d["t_max"], d["omega_u"], d["drop_u"]]

  t, r, t_min, t_max, omega, dropped_labels = official_draws(model, variables, served, gen, d, e,
                                                              labels, jnp)

  def loss_fn(p):
    served.serve(normal=normals, uniform=uniforms)
    loss, metrics = model.apply({"params": p}, jnp.asarray(x), jnp.asarray(labels),
                                method=model.forward, rngs=gen)
    assert not served.queues["normal"] and not served.queues["uniform"], "draws left over"
    return loss, metrics
  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  squeeze = lambda a: np.asarray(a, np.float32).reshape(BATCH)
  golden.update(loss_x=x, loss_labels=labels, loss_e=e, loss_t=squeeze(t), loss_r=squeeze(r),
                loss_omega=squeeze(omega), loss_omega_u=squeeze(d["omega_u"]), loss_t_min=squeeze(t_min), loss_t_max=squeeze(t_max),
                loss_dropped=np.asarray(dropped_labels) == NUM_CLASSES,
                loss=np.asarray(loss), loss_u=np.asarray(metrics["loss_u"]),
                loss_v=np.asarray(metrics["loss_v"]))
  golden.update(flat(grads["net"], "grad"))
  print(f"loss {float(loss):.6f}, loss_u {float(metrics['loss_u']):.6f}, "
        f"loss_v {float(metrics['loss_v']):.6f}; dropped rows "
        f"{np.flatnonzero(golden['loss_dropped']).tolist()}; r != t rows "
        f"{np.flatnonzero(golden['loss_t'] != golden['loss_r']).tolist()}")

  # 3. Samples: the official generate with (omega, t_min, t_max) chosen at sampling time.
  config = types.SimpleNamespace(dataset=types.SimpleNamespace(
      num_classes=NUM_CLASSES, image_size=size, image_channels=ch))
  n_sample = 4
  for steps, (w, lo, hi) in SAMPLING.items():
    noise = f32(rng.randn(n_sample, size, size, ch))
    served.serve(normal=[noise])
    images = official.generate(variables, model, jax.random.key(3), n_sample, config, steps,
                               w, lo, hi, sample_idx=1)
    golden.update({f"sample{steps}_noise": noise, f"sample{steps}_omega": np.array(w),
                   f"sample{steps}_t_min": np.array(lo), f"sample{steps}_t_max": np.array(hi),
                   f"sample{steps}_labels": (np.arange(n_sample) + n_sample) % NUM_CLASSES,
                   f"sample{steps}": np.asarray(images)})

  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  np.savez_compressed(args.out, **golden)
  print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes, {len(golden)} arrays)")
  shutil.rmtree(tmp)


if __name__ == "__main__":
  main()
