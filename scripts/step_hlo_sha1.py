"""sha1 of the lowered StableHLO of a config's train step (and of its 1-NFE sampler).

A refactor that must not change numbers should leave these byte-identical:

  python -m scripts.step_hlo_sha1 --config=configs/default.py [--devices=8]

Nothing is allocated or compiled: the step is lowered on abstract inputs with the trainer's
shardings (benchmarks/scale.py's helpers).
"""
import hashlib
import os
import sys

if __name__ == "__main__":
  devices = next((a.split("=")[1] for a in sys.argv[1:] if a.startswith("--devices=")), "8")
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={devices}")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

# pylint: disable=wrong-import-position
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks import scale  # noqa: E402
from mf_jax import sharding as sharding_lib  # noqa: E402
from mf_jax import train_state as ts  # noqa: E402
from mf_jax import train_step as step_lib  # noqa: E402
from mf_jax import generate  # noqa: E402

FLAGS = flags.FLAGS  # --config and --devices (default 8) are benchmarks/scale.py's flags.


def step_hlo(config, mesh) -> str:
  model, optimizer = ts.build_model(config), ts.make_optimizer(config)
  state, shardings = scale.abstract_state(config, model, optimizer, mesh)
  step = step_lib.jit_train_step(step_lib.make_train_step(config, model, optimizer, mesh=mesh),
                                 mesh, shardings)
  return step.lower(state, scale.abstract_batch(config, mesh)).as_text(), state


def sampler_hlo(config, mesh, params) -> str:
  model = ts.build_model(config)
  d, b = config.data, mesh.size * 2
  batch = sharding_lib.batch_sharding(mesh)
  noise = jax.ShapeDtypeStruct((b, d.image_size, d.image_size, d.channels), jnp.float32,
                               sharding=batch)
  labels = jax.ShapeDtypeStruct((b,), jnp.int32, sharding=batch)
  return generate.make_sampler(config, model, mesh).lower(params, noise, labels, 1).as_text()


def main(argv):
  del argv
  config = FLAGS.config.copy_and_resolve_references()
  mesh = sharding_lib.make_mesh(config.sharding.fsdp, jax.devices()[:FLAGS.devices])
  text, state = step_hlo(config, mesh)
  print(f"train_step sha1 {hashlib.sha1(text.encode()).hexdigest()} ({len(text)} chars)")
  if config.method != "mae":
    text = sampler_hlo(config, mesh, state.params)
    print(f"sampler    sha1 {hashlib.sha1(text.encode()).hexdigest()} ({len(text)} chars)")


if __name__ == "__main__":
  app.run(main)
