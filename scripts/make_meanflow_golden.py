"""Golden files from the official MeanFlow JAX code (Gsunshine/meanflow), for tests/test_meanflow_official.py.

Runs the official code from a local copy (nothing of it is committed here) and writes
  tests/golden/meanflow_official_ckpt/checkpoint_<step>  a tiny official DiT with random weights, as
      the official trainer's legacy Flax checkpoint: a TrainState {step, params, opt_state,
      ema_params} with the network under `net/`, msgpack-serialised (what flax's legacy
      save_checkpoint writes: serialization.to_state_dict + msgpack_serialize).
  tests/golden/meanflow_official.npz  the official outputs on fixed inputs:
      u(z, t, h, y) with the raw and the EMA parameters;
      MeanFlow.forward on a fixed batch with the official time draws, noise and dropout draws
      replayed (so t, r, noise and the drop mask are fixed): loss, target u_tgt, u and du/dt;
      1-NFE and 2-NFE samples (official `generate`, EMA parameters) from fixed noise;
      the parameter names and shapes of the released MF-B/4 (DiT_B_4), for the converter.

The official code gets its random numbers from `jax.random.*` inside MeanFlow; this script swaps the
`jax` name of its own imported copy of `meanflow.py` for a thin stand-in that serves fixed values for
those draws (shapes checked) and records what the code passes to `jax.lax.stop_gradient` and
`jax.jvp`. Nothing else of the official computation is touched.

Edits applied to the temporary copy so that it runs on the current JAX (and nothing else):
  jnp.clip(..., a_min=, a_max=) -> min=, max=   (keywords removed from jnp.clip)
  jax.tree_map -> jax.tree_util.tree_map          (removed API)

  python scripts/make_meanflow_golden.py --official_git_dir=/path/to/Gsunshine+meanflow/repo
  python scripts/make_meanflow_golden.py --official_dir=/path/to/checkout --commit=<sha>
"""
import functools
import os
import shutil
import sys
import types

import numpy as np

import official_checkout  # scripts/official_checkout.py (the scripts run as files)

OFFICIAL_COMMIT = "d70cb55d298ee03c53bf6da67bec281082e4e2d9"  # Gsunshine/meanflow, 2026-03-13.
OFFICIAL_FILES = ("meanflow.py", "models/models_dit.py", "models/timm_models.py",
                  "models/torch_models.py")
COMPAT_EDITS = (("a_min=", "min="), ("a_max=", "max="), ("jax.tree_map(", "jax.tree_util.tree_map("))

# The tiny model and the objective's settings the golden files use (the test reads them back).
TINY = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=8, depth=2, num_heads=2,
            num_classes=10)
# norm_p = 0.5 (not the released 1.0) keeps the golden loss sensitive: with random weights the
# per-sample error is large and d / (d + c) would sit at 1 whatever the outputs.
METHOD = dict(P_mean=-0.4, P_std=1.0, data_proportion=0.75, guidance_eq="cfg", omega=1.2, kappa=0.5,
              t_start=0.1, t_end=0.8, class_dropout_prob=0.1, norm_p=0.5, norm_eps=0.01)
BATCH = 8


def apply_compat_edits(dest):
  applied = []
  for f in OFFICIAL_FILES:
    path = os.path.join(dest, f)
    text = open(path).read()
    for old, new in COMPAT_EDITS:
      if old in text:
        applied.append(f"{f}: {old} -> {new} ({text.count(old)}x)")
        text = text.replace(old, new)
    open(path, "w").write(text)
  return applied


class ReplayedJax(types.SimpleNamespace):
  """Stands in for the `jax` module inside the official meanflow.py.

  jax.random.normal / uniform / randint return the next queued value for that function (its shape
  must equal the requested shape) or, with an empty queue, the real draw; every value is recorded.
  jax.lax.stop_gradient and jax.jvp are the real ones, with their arguments / outputs recorded.
  """

  def __init__(self, real_jax):
    super().__init__()
    self._real = real_jax
    self.queues = {"normal": [], "uniform": [], "randint": []}
    self.records = {"normal": [], "uniform": [], "randint": [], "stop_gradient": [], "jvp": []}
    self.random = types.SimpleNamespace(**{name: functools.partial(self._draw, name)
                                           for name in self.queues},
                                        split=real_jax.random.split, fold_in=real_jax.random.fold_in,
                                        key=real_jax.random.key, PRNGKey=real_jax.random.PRNGKey)
    self.lax = types.SimpleNamespace(stop_gradient=self._stop_gradient,
                                     fori_loop=real_jax.lax.fori_loop)

  def __getattr__(self, name):
    return getattr(self._real, name)

  def _draw(self, name, key, shape=(), *args, **kwargs):
    real = getattr(self._real.random, name)(key, shape, *args, **kwargs)
    if self.queues[name]:
      value = self._real.numpy.asarray(self.queues[name].pop(0), real.dtype)
      assert value.shape == real.shape, (name, value.shape, real.shape)
      real = value
    self.records[name].append(real)
    return real

  def _stop_gradient(self, x):
    self.records["stop_gradient"].append(x)
    return self._real.lax.stop_gradient(x)

  def jvp(self, *args, **kwargs):
    out = self._real.jvp(*args, **kwargs)
    self.records["jvp"].append(out)
    return out

  def reset(self):
    for v in self.records.values():
      v.clear()


def random_weights(params, key, jax, scale):
  """Every leaf replaced by init + scale * N(0, 1) / sqrt(fan_in) (fan_in: all but the last axis),
  so the zero-initialised adaLN and output layers take part too."""
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(key, len(leaves))
  out = []
  for p, k in zip(leaves, keys):
    fan_in = int(np.prod(p.shape[:-1])) if p.ndim > 1 else 10
    out.append(p + scale * jax.random.normal(k, p.shape, p.dtype) / np.sqrt(fan_in))
  return jax.tree_util.tree_unflatten(treedef, out)


def main():
  args = official_checkout.parse_args(__doc__.splitlines()[0], "Gsunshine/meanflow",
                                      OFFICIAL_COMMIT, "")  # --out: the golden folder.
  tmp, commit = official_checkout.temporary_copy(OFFICIAL_FILES, args, "meanflow_official_")
  edits = apply_compat_edits(tmp)
  print(f"official commit {commit}; edits to the temporary copy:\n  " + "\n  ".join(edits))
  sys.path.insert(0, tmp)

  import jax
  import jax.numpy as jnp
  import optax
  from flax import serialization, traverse_util
  from flax.training import train_state
  from typing import Any
  import meanflow as official  # pylint: disable=import-error
  from models import models_dit  # pylint: disable=import-error

  models_dit.DiT_golden_tiny = functools.partial(models_dit.DiT, **{
      k: v for k, v in TINY.items()})
  replay = ReplayedJax(jax)
  official.jax = replay

  model = official.MeanFlow(model_str="DiT_golden_tiny", model_config={},
                            num_classes=TINY["num_classes"], **METHOD)
  size, ch, nc = TINY["input_size"], TINY["in_channels"], TINY["num_classes"]

  # Parameters: official init, then random weights (raw and EMA differ).
  variables = model.init({"params": jax.random.key(0)}, jnp.ones((1, size, size, ch)),
                         jnp.ones((1,)), jnp.ones((1,), jnp.int32))
  params = random_weights(variables["params"], jax.random.key(1), jax, scale=1.0)
  ema_params = random_weights(variables["params"], jax.random.key(2), jax, scale=1.0)

  class TrainState(train_state.TrainState):  # The official trainer's state (train.py).
    ema_params: Any

  tx = optax.adamw(learning_rate=1e-4, weight_decay=0, b2=0.95)
  state = TrainState.create(apply_fn=None, params=params, ema_params=ema_params, tx=tx)
  grads = random_weights(jax.tree_util.tree_map(jnp.zeros_like, params), jax.random.key(3), jax, 1.0)
  state = state.apply_gradients(grads=grads)  # Non-trivial Adam moments, step 1.
  ckpt_dir = os.path.join(args.out, "meanflow_official_ckpt")
  shutil.rmtree(ckpt_dir, ignore_errors=True)
  os.makedirs(ckpt_dir)
  # What flax's legacy (non-Orbax) save_checkpoint writes for the official TrainState.
  with open(os.path.join(ckpt_dir, f"checkpoint_{int(state.step)}"), "wb") as f:
    f.write(serialization.msgpack_serialize(serialization.to_state_dict(state)))

  rng = np.random.RandomState(0)
  golden = dict(official_commit=np.array(commit), official_edits=np.array("\n".join(edits)))
  golden.update({f"tiny_{k}": np.array(v) for k, v in TINY.items()})
  golden.update({f"method_{k}": np.array(v) for k, v in METHOD.items()})

  # 1. u(z, t, h, y), raw and EMA parameters. h = 0 (instantaneous), h = t (r = 0) and others.
  n = 6
  z = rng.randn(n, size, size, ch).astype(np.float32)
  t = np.array([1.0, 0.7, 0.5, 0.25, 0.9, 0.05], np.float32)
  h = np.array([1.0, 0.0, 0.3, 0.25, 0.6, 0.0], np.float32)
  y = np.array([0, 3, 9, nc, 5, 7], np.int32)  # nc = the null class.
  for tag, p in (("params", state.params), ("ema", state.ema_params)):
    golden[f"u_{tag}"] = np.asarray(model.apply({"params": p}, z, t, h, y, False,
                                                method=model.u_fn, rngs={"gen": jax.random.key(4)}))
  golden.update(u_z=z, u_t=t, u_h=h, u_y=y)

  # 2. MeanFlow.forward on a fixed batch: time normals, noise and dropout uniforms are replayed.
  x = rng.randn(BATCH, size, size, ch).astype(np.float32)
  labels = np.array([1, 4, 0, 9, 2, 7, 3, 5], np.int32)
  normal_t = np.array([-1.5, 0.3, 2.5, -0.2, 1.0, 2.2, 0.5, 2.4], np.float32).reshape(-1, 1, 1, 1)
  normal_r = np.array([-0.5, 1.1, -2.0, 0.4, -1.0, 0.1, -1.3, 0.9], np.float32).reshape(-1, 1, 1, 1)
  noise = rng.randn(BATCH, size, size, ch).astype(np.float32)
  drop_uniform = np.array([0.5, 0.05, 0.9, 0.3, 0.02, 0.7, 0.6, 0.4], np.float32)  # 2 below 0.1
  p = {"params": state.params}
  replay.queues["normal"] += [normal_t, normal_r]
  t_off, r_off = model.apply(p, BATCH, method=model.sample_tr, rngs={"gen": jax.random.key(5)})
  replay.queues["uniform"] += [drop_uniform]
  y_inp, _ = model.apply(p, jnp.zeros((BATCH, 1, 1, 1)), jnp.zeros((BATCH, 1, 1, 1)), labels,
                         method=model.cond_drop, rngs={"gen": jax.random.key(5)})
  replay.reset()
  replay.queues["normal"] += [normal_t, normal_r, noise]
  replay.queues["uniform"] += [drop_uniform]
  loss, aux = model.apply(p, x, labels, method=model.forward, rngs={"gen": jax.random.key(6)})
  assert not any(replay.queues.values()), "the official forward drew fewer numbers than queued"
  u_tgt = replay.records["stop_gradient"][0]  # First stop_gradient in forward: the target.
  u, dudt = replay.records["jvp"][0]
  golden.update(loss_x=x, loss_labels=labels, loss_t=np.asarray(t_off).reshape(-1),
                loss_r=np.asarray(r_off).reshape(-1), loss_noise=noise,
                loss_dropped=np.asarray(y_inp) == nc, loss=np.asarray(loss),
                loss_v_loss=np.asarray(aux["v_loss"]), loss_target=np.asarray(u_tgt),
                loss_u=np.asarray(u), loss_dudt=np.asarray(dudt))

  # 3. 1-NFE and 2-NFE samples with the EMA parameters (the official evaluator's choice).
  import ml_collections
  sample_noise = rng.randn(BATCH, size, size, ch).astype(np.float32)
  for steps in (1, 2):
    sampler = official.MeanFlow(model_str="DiT_golden_tiny", model_config={}, num_classes=nc,
                                num_steps=steps, **METHOD,
                                sampling_timesteps=jnp.linspace(1.0, 0.0, steps + 1))
    config = ml_collections.ConfigDict(dict(
        sampling=dict(num_steps=steps),
        dataset=dict(num_classes=nc, image_size=size, image_channels=ch)))
    replay.reset()
    replay.queues["normal"] += [sample_noise]
    images = official.generate({"params": state.ema_params}, sampler, jax.random.key(7), BATCH,
                               config)
    golden[f"sample_{steps}nfe"] = np.asarray(images)
    golden["sample_labels"] = np.asarray(replay.records["randint"][0])
  golden["sample_noise"] = sample_noise

  # 4. The released MF-B/4's parameter names and shapes (shapes only, nothing allocated).
  b4 = official.MeanFlow(model_str="DiT_B_4", model_config={}, num_classes=1000)
  shapes = jax.eval_shape(lambda: b4.init({"params": jax.random.key(0)}, jnp.ones((1, 32, 32, 4)),
                                          jnp.ones((1,)), jnp.ones((1,), jnp.int32)))["params"]
  flat = traverse_util.flatten_dict(shapes, sep="/")
  golden["b4_params"] = np.array("\n".join(f"{k} {','.join(map(str, v.shape))}"
                                           for k, v in sorted(flat.items())))

  path = os.path.join(args.out, "meanflow_official.npz")
  np.savez_compressed(path, **golden)
  print(f"wrote {path} and {ckpt_dir}; loss {float(loss):.6f}, dropped rows "
        f"{np.nonzero(golden['loss_dropped'])[0].tolist()}, t {golden['loss_t'].round(3).tolist()}")
  shutil.rmtree(tmp)


if __name__ == "__main__":
  main()
