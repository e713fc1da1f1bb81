"""XLA's FLOPs per image of the official MeanFlow JAX train step, for the table in RESULTS.md, and
(--time) its speed on the local device.

  git --git-dir=$(fetched Gsunshine/meanflow) archive HEAD meanflow.py models | tar -x -C /tmp/meanflow
  python -m benchmarks.official_step_flops --official=/tmp/meanflow [--variant=DiT_B_2 --batch=32]
  python -m benchmarks.official_step_flops --official=/tmp/meanflow --time --batch=256 \
      [--matmul_precision=BF16_BF16_F32]

The official code stays outside this repository: it is copied to a temporary folder and patched
there for current JAX (jnp.clip's a_min/a_max -> min/max, jax.tree_map -> jax.tree_util.tree_map,
docs/measurements.md). Its MeanFlow.forward loss, value_and_grad, Adam (betas 0.9, 0.95) and an
EMA update are compiled for one CPU device with abstract inputs, unguided (guidance_eq='') and
guided as released (omega 1, kappa 0.5, class dropout 0.1). The batch is the per-device batch of
batch 256 on 8 devices, so the figures compare with scale.py's at 8 devices. Prints JSON.

--time compiles the same step with the backend's default optimisation (the FLOP count compiles at
level 0, fine for counting, useless for timing) on real arrays and times it as benchmarks.train_step
does: compile time, first-step loss, median step time, images/s. --matmul_precision runs it under
jax.default_matmul_precision (e.g. BF16_BF16_F32: the official float32 step with bf16 matmul
operands, the GPU counterpart of its TPU runs).
"""
import contextlib
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import optax
from absl import flags


OFFICIAL_COMMIT = "d70cb55d298ee03c53bf6da67bec281082e4e2d9"

PATCHES = ((r"a_min=", "min="), (r"a_max=", "max="), (r"jax\.tree_map\(", "jax.tree_util.tree_map("))


def patched_copy(src: str) -> str:
  """Copies meanflow.py and models/ to a temporary folder and applies PATCHES there."""
  dst = tempfile.mkdtemp(prefix="official_meanflow_")
  shutil.copy(os.path.join(src, "meanflow.py"), dst)
  shutil.copytree(os.path.join(src, "models"), os.path.join(dst, "models"))
  for root, _, files in os.walk(dst):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(root, name)
        with open(path) as f:
          text = f.read()
        for pattern, repl in PATCHES:
          text = re.sub(pattern, repl, text)
        with open(path, "w") as f:
          f.write(text)
  return dst


def official_step(official_meanflow, guided: bool, variant: str = "DiT_B_2", image_size: int = 32,
                  channels: int = 4):
  """(train_step(params, opt_state, ema, images, labels, key), init(key) -> params, optimizer):
  the official loss, value_and_grad, Adam (betas 0.9, 0.95) and an EMA update."""
  method = dict(guidance_eq="cfg", omega=1.0, kappa=0.5) if guided else dict(guidance_eq="")
  model = official_meanflow.MeanFlow(model_str=variant, model_config={},
                                     class_dropout_prob=0.1, **method)
  init = lambda k: model.init({"params": k}, jnp.ones((1, image_size, image_size, channels)),
                              jnp.ones((1,), int), jnp.ones((1,), int))["params"]
  optimizer = optax.adam(1e-4, b1=0.9, b2=0.95)
  return official_train_step(model, optimizer), init, optimizer


def official_train_step(model, optimizer):
  """train_step(params, opt_state, ema, images, labels, key) -> (params, opt_state, ema, loss) of an
  official objective module (MeanFlow, iMF): its `forward` loss under value_and_grad, the
  optimizer's update and an EMA update with decay 0.9999."""
  def train_step(params, opt_state, ema, images, labels, key):
    def loss_fn(p):
      return model.apply({"params": p}, images, labels, rngs={"gen": key}, method=model.forward)
    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    ema = jax.tree_util.tree_map(lambda e, p: 0.9999 * e + 1e-4 * p, ema, params)
    return params, opt_state, ema, loss
  return train_step


def step_flops(official_meanflow, guided: bool, batch: int, variant: str = "DiT_B_2") -> float:
  """FLOPs of one official-loss train step (grad, Adam, EMA) on one device."""
  train_step, init, optimizer = official_step(official_meanflow, guided, variant)
  params = jax.eval_shape(init, jax.random.key(0))
  opt_state = jax.eval_shape(optimizer.init, params)
  images = jax.ShapeDtypeStruct((batch, 32, 32, 4), jnp.float32)
  labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
  key = jax.eval_shape(lambda: jax.random.key(0))
  from benchmarks import scale, xla_accounting  # pylint: disable=import-outside-toplevel
  compiled = jax.jit(train_step).lower(params, opt_state, params, images, labels, key).compile(
      scale.COMPILER_OPTIONS)
  return xla_accounting.step_accounting(compiled)["flops_per_device"]


def time_step(official_meanflow, guided: bool, batch: int, variant: str = "DiT_B_2",
              steps: int = 10, repeats: int = 3, warmup: int = 2, matmul_precision: str = "",
              image_size: int = 32, channels: int = 4) -> dict:
  """Compiles the official step on the default device (default optimisation) and times it."""
  precision = (jax.default_matmul_precision(matmul_precision) if matmul_precision
               else contextlib.nullcontext())
  with precision:
    train_step, init, optimizer = official_step(official_meanflow, guided, variant, image_size,
                                                channels)
    params = jax.jit(init)(jax.random.key(0))
    opt_state = optimizer.init(params)
    ema = jax.tree_util.tree_map(jnp.copy, params)
    images = jax.random.normal(jax.random.key(1), (batch, image_size, image_size, channels))
    labels = jax.random.randint(jax.random.key(2), (batch,), 0, 1000)
    key = jax.random.key(3)
    t0 = time.perf_counter()
    step = jax.jit(train_step, donate_argnums=(0, 1, 2)).lower(
        params, opt_state, ema, images, labels, key).compile()
    compile_s = time.perf_counter() - t0
  cost = step.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  state = (params, opt_state, ema)
  *state, loss = step(*state, images, labels, key)
  first_loss = float(loss)
  for _ in range(warmup):
    *state, loss = step(*state, images, labels, key)
  jax.block_until_ready(loss)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    for _ in range(steps):
      *state, loss = step(*state, images, labels, key)
    jax.block_until_ready((state, loss))
    times.append((time.perf_counter() - t0) / steps)
  step_s = statistics.median(times)
  flops = float((cost or {}).get("flops", 0.0))
  return {"compile_s": compile_s, "first_step_loss": first_loss, "median_step_s": step_s,
          "images_per_s": batch / step_s, "flops_per_image": flops / batch,
          "achieved_tflops": flops / step_s / 1e12, "matmul_precision": matmul_precision or "default"}


def load_official(path: str):
  """Imports the official meanflow module from a patched copy of the checkout at `path`."""
  if not os.path.exists(os.path.join(path, "meanflow.py")):
    raise FileNotFoundError(f"{path}: no meanflow.py; extract the official code there (module "
                            "docstring)")
  sys.path.insert(0, patched_copy(path))
  import meanflow as official_meanflow  # pylint: disable=import-outside-toplevel
  return official_meanflow


def main(argv):
  del argv
  official_meanflow = load_official(FLAGS.official)
  out = {"official_commit": FLAGS.official_commit, "variant": FLAGS.variant,
         "batch_per_device": FLAGS.batch, "jax": jax.__version__,
         "device": jax.devices()[0].device_kind}
  for name, guided in (("meanflow", False), ("meanflow_guided", True)):
    if FLAGS.time:
      out[name] = time_step(official_meanflow, guided, FLAGS.batch, FLAGS.variant,
                            matmul_precision=FLAGS.matmul_precision)
    else:
      out[name] = {"flops_per_image": step_flops(official_meanflow, guided, FLAGS.batch,
                                                 FLAGS.variant) / FLAGS.batch}
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  flags.DEFINE_string("official", "/tmp/meanflow", "Checkout (code files) of Gsunshine/meanflow.")
  flags.DEFINE_string("official_commit", OFFICIAL_COMMIT,
                      "The official commit the checkout was taken from (recorded in the output).")
  flags.DEFINE_string("variant", "DiT_B_2", "models_dit constructor name.")
  flags.DEFINE_integer("batch", 32, "Images per device.")
  flags.DEFINE_bool("time", False, "Time the step on the local device instead of counting FLOPs.")
  flags.DEFINE_string("matmul_precision", "", "--time: jax.default_matmul_precision, e.g. "
                      "BF16_BF16_F32 (bf16 operands, float32 accumulation).")
  FLAGS = flags.FLAGS
  from mf_jax import cli  # pylint: disable=g-import-not-at-top
  cli.run_absl(main, "benchmarks.official_step_flops")
