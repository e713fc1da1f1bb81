"""XLA's FLOPs per image of the official MeanFlow JAX train step, for the table in RESULTS.md.

  git --git-dir=$(fetched Gsunshine/meanflow) archive HEAD meanflow.py models | tar -x -C /tmp/meanflow
  python -m benchmarks.official_step_flops --official=/tmp/meanflow [--variant=DiT_B_2 --batch=32]

The official code stays outside this repository: it is copied to a temporary folder and patched
there for current JAX (jnp.clip's a_min/a_max -> min/max, jax.tree_map -> jax.tree_util.tree_map,
docs/measurements.md). Its MeanFlow.forward loss, value_and_grad, Adam (betas 0.9, 0.95) and an
EMA update are compiled for one CPU device with abstract inputs, unguided (guidance_eq='') and
guided as released (omega 1, kappa 0.5, class dropout 0.1). The batch is the per-device batch of
batch 256 on 8 devices, so the figures compare with scale.py's at 8 devices. Prints JSON.
"""
import json
import os
import re
import shutil
import sys
import tempfile

import jax
import jax.numpy as jnp
import optax
from absl import flags

from benchmarks import scale, xla_accounting

flags.DEFINE_string("official", "/tmp/meanflow", "Checkout (code files) of Gsunshine/meanflow.")
flags.DEFINE_string("official_commit", "d70cb55d298ee03c53bf6da67bec281082e4e2d9",
                    "The official commit the checkout was taken from (recorded in the output).")
flags.DEFINE_string("variant", "DiT_B_2", "models_dit constructor name.")
flags.DEFINE_integer("batch", 32, "Images per device.")
FLAGS = flags.FLAGS

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


def step_flops(official_meanflow, guided: bool, batch: int) -> float:
  """FLOPs of one official-loss train step (grad, Adam, EMA) on one device."""
  method = dict(guidance_eq="cfg", omega=1.0, kappa=0.5) if guided else dict(guidance_eq="")
  model = official_meanflow.MeanFlow(model_str=FLAGS.variant, model_config={},
                                     class_dropout_prob=0.1, **method)
  init = lambda k: model.init({"params": k}, jnp.ones((1, 32, 32, 4)), jnp.ones((1,), int),
                              jnp.ones((1,), int))["params"]
  params = jax.eval_shape(init, jax.random.key(0))
  optimizer = optax.adam(1e-4, b1=0.9, b2=0.95)
  opt_state = jax.eval_shape(optimizer.init, params)

  def train_step(params, opt_state, ema, images, labels, key):
    def loss_fn(p):
      return model.apply({"params": p}, images, labels, rngs={"gen": key}, method=model.forward)
    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    ema = jax.tree_util.tree_map(lambda e, p: 0.9999 * e + 1e-4 * p, ema, params)
    return params, opt_state, ema, loss

  images = jax.ShapeDtypeStruct((batch, 32, 32, 4), jnp.float32)
  labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
  key = jax.eval_shape(lambda: jax.random.key(0))
  compiled = jax.jit(train_step).lower(params, opt_state, params, images, labels, key).compile(
      scale.COMPILER_OPTIONS)
  return xla_accounting.step_accounting(compiled)["flops_per_device"]


def main(argv):
  del argv
  sys.path.insert(0, patched_copy(FLAGS.official))
  import meanflow as official_meanflow  # pylint: disable=import-outside-toplevel
  out = {"official_commit": FLAGS.official_commit, "variant": FLAGS.variant,
         "batch_per_device": FLAGS.batch, "jax": jax.__version__}
  for name, guided in (("meanflow", False), ("meanflow_guided", True)):
    out[name] = {"flops_per_image": step_flops(official_meanflow, guided, FLAGS.batch) / FLAGS.batch}
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  from mf_jax import cli  # pylint: disable=g-import-not-at-top
  cli.run_absl(main, "benchmarks.official_step_flops")
