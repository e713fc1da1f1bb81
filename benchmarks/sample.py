"""Sampling throughput: images/s of 1-NFE and 2-NFE MeanFlow sampling, and with VAE decoding.

  python -m benchmarks.sample --config=configs/default.py [--batch=64]

Parameters are randomly initialised (throughput does not depend on them). For latent configs the
SD-VAE decoder (random weights, the real layout) is timed on the same batch when --decode is set.
Prints one JSON object.
"""
import json
import statistics
import time

import jax
import jax.numpy as jnp
from absl import flags
from ml_collections import config_flags

from mf_jax import generate
from mf_jax import sharding as sharding_lib
from mf_jax import train_state as ts

config_flags.DEFINE_config_file("config", "configs/default.py", "Config to benchmark.")
flags.DEFINE_integer("batch", 64, "Images per sampling call (split over all devices).")
flags.DEFINE_integer("repeats", 5, "Timed calls per setting.")
flags.DEFINE_bool("decode", False, "Also time SD-VAE decoding of latent samples.")
FLAGS = flags.FLAGS


def median_seconds(fn, *args):
  jax.block_until_ready(fn(*args))  # Compile and warm up.
  times = []
  for _ in range(FLAGS.repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def main(argv):
  del argv
  config = FLAGS.config
  mesh = sharding_lib.make_mesh(1)
  model = ts.build_model(config)
  params = model.init(jax.random.key(0), *ts.example_inputs(config))
  sample_fn = generate.make_sampler(config, model, mesh)
  d = config.data
  put = lambda a: jax.device_put(a, sharding_lib.batch_sharding(mesh))
  noise = put(jax.random.normal(jax.random.key(1), (FLAGS.batch, d.image_size, d.image_size, d.channels)))
  labels = put(jnp.arange(FLAGS.batch, dtype=jnp.int32) % max(d.num_classes, 1))
  out = {"config": {"variant": config.model.variant, "depth": config.model.depth,
                    "hidden_size": config.model.hidden_size, "batch": FLAGS.batch},
         "device": jax.devices()[0].device_kind, "num_devices": jax.device_count()}
  for steps in (1, 2):
    s = median_seconds(lambda n, y: sample_fn(params, n, y, steps), noise, labels)
    out[f"{steps}nfe_images_per_s"] = FLAGS.batch / s
  if FLAGS.decode:
    from mf_jax.models import vae
    vae_config = vae.LAYOUTS["sd"]
    vae_params = vae.random_params(vae_config, seed=0)
    decode = jax.jit(lambda z: vae.decode_latents(vae_config, vae_params, z / vae.SCALE_FACTOR))
    s = median_seconds(decode, noise)
    out["vae_decode_images_per_s"] = FLAGS.batch / s
    out["1nfe_plus_decode_images_per_s"] = 1.0 / (1.0 / out["1nfe_images_per_s"] + s / FLAGS.batch)
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  from mf_jax import cli  # pylint: disable=g-import-not-at-top
  cli.run_absl(main, "benchmarks.sample")
