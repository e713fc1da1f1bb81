"""XLA's FLOPs per image of the official pixel MeanFlow JAX train step, for the pMF rows of RESULTS.md.

  mkdir -p /tmp/pmf_official && git --git-dir=$(fetched Lyy-iiis/pMF) archive \
      75f6073042c21f7104686261a0c4784db4ede9d1 pmf.py models utils | tar -x -C /tmp/pmf_official
  python -m benchmarks.official_pmf_step_flops --official=/tmp/pmf_official [--variant=pmfDiT_B_16]

The official pixelMeanFlow.forward (the released B/16 or L/16 settings, perceptual term on) is
imported from the checkout unedited, with its own paired random resized crop
(utils/auxloss_util.py); the frozen perceptual networks are this project's LPIPS-VGG16 and
ConvNeXt-V2-Base modules (the same architectures as the official lpips_j and models/convnext.py;
the official ones load their weights from the Hugging Face hub, which this machine cannot reach),
passed as arguments so they are not folded into constants. With value_and_grad, Muon
(optax.contrib.muon, lr 1e-3, adam_b2 0.95, as its train state) and three EMA updates, the step is
compiled for one CPU device with abstract inputs at the per-device batch of the recipe's 1024 on 8
devices (128), so the figures compare with
`benchmarks/scale.py --config=configs/imagenet_pmf.py:B/16 --devices=8`. Prints JSON.
"""
import json
import sys

import jax
import jax.numpy as jnp
import optax
from absl import app, flags

from benchmarks import scale, xla_accounting
from mf_jax.models import convnext, lpips
from scripts import official_checkout

flags.DEFINE_string("official", "/tmp/pmf_official", "Checkout (pmf.py, models/, utils/) of "
                    "Lyy-iiis/pMF.")
flags.DEFINE_string("official_commit", "75f6073042c21f7104686261a0c4784db4ede9d1",
                    "The official commit the checkout was taken from (recorded in the output).")
flags.DEFINE_string("variant", "pmfDiT_B_16", "models/pmfDiT.py constructor name.")
flags.DEFINE_integer("batch", 128, "Images per device.")
FLAGS = flags.FLAGS
# variant -> (image size, the official training config's pixelMeanFlow fields).
RECIPES = {
    "pmfDiT_B_16": (256, dict(P_mean=0.8, P_std=0.8, noise_scale=1.0, cfg_beta=1.0,
                              perceptual_max_t=0.8)),
    "pmfDiT_L_16": (256, dict(P_mean=0.8, P_std=0.8, noise_scale=1.0, cfg_beta=2.0,
                              perceptual_max_t=0.8)),
}
PERCEPTUAL = dict(lpips=True, lpips_lambda=0.4, convnext=True, convnext_lambda=0.1)
EMA_DECAYS = (0.9985814, 0.9992905, 0.9996452)  # Steady state of the 500/1000/2000 kimg EMAs.


def step_flops(official_pmf, auxloss_util, batch: int) -> dict:
  """XLA accounting of one official train step (loss grad, Muon, three EMAs) on one device."""
  size, recipe = RECIPES[FLAGS.variant]
  model = official_pmf.pixelMeanFlow(model_str=FLAGS.variant, num_classes=1000, **recipe,
                                     **PERCEPTUAL)
  init = lambda k: model.init({"params": k}, jnp.ones((1, size, size, 3)), jnp.ones((1,)),
                              jnp.ones((1,), jnp.int32))["params"]
  params = jax.eval_shape(init, jax.random.key(0))
  optimizer = optax.contrib.muon(1e-3, adam_b2=0.95)
  opt_state = jax.eval_shape(optimizer.init, params)
  lpips_net, convnext_net = lpips.LPIPS(), convnext.ConvNeXtV2()
  crop = convnext.example_input()
  frozen = jax.eval_shape(lambda k: (lpips_net.init(k, crop, crop), convnext_net.init(k, crop)),
                          jax.random.key(0))

  def train_step(params, opt_state, emas, frozen, images, labels, key):
    lpips_vars, convnext_vars = frozen

    def aux_fn(pred_x, x, rng):
      a, b = auxloss_util.paired_random_resized_crop(rng, pred_x, x, out_size=224)
      f = lambda im: convnext_net.apply(convnext_vars, im, features=False)
      return (lpips_net.apply(lpips_vars, a, b).reshape(-1),
              jnp.sum((f(a) - f(b)) ** 2, axis=-1))

    def loss_fn(p):
      return model.apply({"params": p}, images, labels, aux_fn, rngs={"gen": key},
                         method=model.forward)
    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    emas = tuple(jax.tree_util.tree_map(lambda e, p, d=d: d * e + (1 - d) * p, ema, params)
                 for ema, d in zip(emas, EMA_DECAYS))
    return params, opt_state, emas, loss

  images = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
  labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
  key = jax.eval_shape(lambda: jax.random.key(0))
  emas = (params,) * len(EMA_DECAYS)
  compiled = jax.jit(train_step).lower(params, opt_state, emas, frozen, images, labels,
                                       key).compile(scale.COMPILER_OPTIONS)
  count = sum(int(p.size) for p in jax.tree_util.tree_leaves(params))
  return {"parameters": count, **xla_accounting.step_accounting(compiled)}


def main(argv):
  del argv
  official_checkout.stub_pmf_unused_modules()
  sys.path.insert(0, FLAGS.official)
  import pmf as official_pmf  # pylint: disable=import-outside-toplevel,import-error
  from utils import auxloss_util  # pylint: disable=import-outside-toplevel,import-error
  acc = step_flops(official_pmf, auxloss_util, FLAGS.batch)
  out = {"official_commit": FLAGS.official_commit, "variant": FLAGS.variant,
         "batch_per_device": FLAGS.batch, "jax": jax.__version__, "parameters": acc["parameters"],
         "pmf": {"flops_per_image": acc["flops_per_device"] / FLAGS.batch}}
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  app.run(main)
