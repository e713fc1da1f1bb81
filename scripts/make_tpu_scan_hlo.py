"""Writes tests/golden/tpu_v5p_scan_hlo.txt: the TPU compiler's HLO of a 6-step lax.scan of a
[256, 512] x [512, 512] matmul, compiled ahead of time for a TPU v5p 2x2x2 slice on this CPU
machine (no TPU). The TPU compiler prints no known_trip_count on its while loops, so
benchmarks/xla_accounting.py reads the trip count off the loop condition; tests/test_xla_accounting.py
checks that on this file.

  pip install --target=/tmp/libtpu 'libtpu==0.0.42.*'
  PYTHONPATH=/tmp/libtpu:. python scripts/make_tpu_scan_hlo.py
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import topologies
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "golden", "tpu_v5p_scan_hlo.txt")


def main():
  devices = topologies.get_topology_desc(platform="tpu", topology_name="v5p:2x2x2").devices
  replicated = NamedSharding(Mesh(np.array(devices), ("d",)), P())
  def scanned(c, w):
    return jax.lax.scan(lambda c, i: (jnp.tanh(c @ w) * i, None), c, jnp.arange(1.0, 7.0))[0]
  abstract = lambda shape: jax.ShapeDtypeStruct(shape, jnp.float32, sharding=replicated)
  compiled = jax.jit(scanned).lower(abstract((256, 512)), abstract((512, 512))).compile()
  with open(OUT, "w") as f:
    f.write(compiled.as_text())
  print(f"wrote {OUT}; XLA flops {compiled.cost_analysis()['flops']:.0f} (one iteration)")


if __name__ == "__main__":
  main()
