"""XLA's FLOPs per image of the official iMF JAX train step, for the iMF rows of RESULTS.md.

  mkdir -p /tmp/imf_official && git --git-dir=$(fetched Lyy-iiis/imeanflow) archive \
      bf60cd7cb653f6628e59d48034b333c5eba445e2 imf.py models | tar -x -C /tmp/imf_official
  python -m benchmarks.official_imf_step_flops --official=/tmp/imf_official [--variant=imfDiT_B_2]

The official code stays outside this repository and is imported from the checkout unedited (it runs
on current JAX as is; scripts/make_imf_golden.py runs the same files). Its iMeanFlow.forward loss
(released settings: omega ~ 1/omega on [1, 8), random guidance intervals, 10% class dropout,
norm_p 1) with value_and_grad, AdamW (betas 0.9, 0.95, no weight decay, as its train state) and the
constant-0.9999 EMA update is compiled for one CPU device with abstract inputs. The batch is the
per-device batch of the released recipe's 1024 on 8 devices (128), so the figures compare with
`benchmarks/scale.py --config=configs/imagenet_imf.py:B/2 --devices=8`. Prints JSON.
"""
import json
import sys

import jax
import jax.numpy as jnp
import optax
from absl import app, flags

from benchmarks import scale, xla_accounting
from benchmarks.official_step_flops import official_train_step

flags.DEFINE_string("official", "/tmp/imf_official", "Checkout (imf.py, models/) of "
                    "Lyy-iiis/imeanflow.")
flags.DEFINE_string("official_commit", "bf60cd7cb653f6628e59d48034b333c5eba445e2",
                    "The official commit the checkout was taken from (recorded in the output).")
flags.DEFINE_string("variant", "imfDiT_B_2", "models/imfDiT.py constructor name.")
flags.DEFINE_integer("batch", 128, "Images per device.")
FLAGS = flags.FLAGS


def step_flops(official_imf, batch: int) -> dict:
  """XLA accounting of one official train step (loss grad, AdamW, EMA) on one device."""
  model = official_imf.iMeanFlow(model_str=FLAGS.variant, num_classes=1000)
  init = lambda k: model.init({"params": k}, jnp.ones((1, 32, 32, 4)), jnp.ones((1,), int),
                              jnp.ones((1,), int))["params"]
  params = jax.eval_shape(init, jax.random.key(0))
  optimizer = optax.adamw(1e-4, b1=0.9, b2=0.95, weight_decay=0.0)
  opt_state = jax.eval_shape(optimizer.init, params)

  train_step = official_train_step(model, optimizer)
  images = jax.ShapeDtypeStruct((batch, 32, 32, 4), jnp.float32)
  labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
  key = jax.eval_shape(lambda: jax.random.key(0))
  compiled = jax.jit(train_step).lower(params, opt_state, params, images, labels, key).compile(
      scale.COMPILER_OPTIONS)
  count = sum(int(p.size) for p in jax.tree_util.tree_leaves(params))
  return {"parameters": count, **xla_accounting.step_accounting(compiled)}


def main(argv):
  del argv
  sys.path.insert(0, FLAGS.official)
  import imf as official_imf  # pylint: disable=import-outside-toplevel,import-error
  acc = step_flops(official_imf, FLAGS.batch)
  out = {"official_commit": FLAGS.official_commit, "variant": FLAGS.variant,
         "batch_per_device": FLAGS.batch, "jax": jax.__version__, "parameters": acc["parameters"],
         "imf": {"flops_per_image": acc["flops_per_device"] / FLAGS.batch}}
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  app.run(main)
