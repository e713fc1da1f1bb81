"""benchmarks/xla_accounting.py against XLA itself: loop iterations that cost_analysis() counts
once are added back, convolutions are counted as XLA counts them, and collectives inside a loop
count once per iteration."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from benchmarks import xla_accounting

TRIPS = 6


def _body(c, w, x, i):
  """Matmul-dominated work: [64, 256] x [256, 256] and a strided convolution."""
  y = jax.lax.conv_general_dilated(x * i, jnp.ones((3, 3, 8, 16)), (2, 2), ((1, 1), (1, 1)),
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return jnp.tanh(c @ w) + jnp.mean(y)


def test_loop_iterations_are_counted_like_an_unrolled_program():
  c, w, x = jnp.ones((64, 256)), jnp.ones((256, 256)) / 256, jnp.ones((4, 16, 16, 8))
  scanned = lambda c, w, x: jax.lax.scan(lambda c, i: (_body(c, w, x, i), None), c,
                                         jnp.arange(1.0, TRIPS + 1.0))[0]
  def unrolled(c, w, x):
    for i in range(1, TRIPS + 1):
      c = _body(c, w, x, float(i))
    return c
  loop = jax.jit(scanned).lower(c, w, x).compile()
  flat = xla_accounting.cost(jax.jit(unrolled).lower(c, w, x).compile())["flops"]
  raw = xla_accounting.cost(loop)["flops"]
  acc = xla_accounting.step_accounting(loop)
  assert acc["loop_trip_counts"] == [TRIPS]
  assert raw < 0.3 * flat  # XLA's own count sees one iteration.
  # The added iterations are exactly dot + convolution FLOPs; the unrolled program also counts each
  # iteration's elementwise work (tanh, scaling, mean: ~2% here).
  assert acc["flops_per_device"] == pytest.approx(flat, rel=0.03)
  assert acc["xla_flops_per_device"] == raw


@pytest.mark.parametrize("kwargs", [
    dict(window_strides=(2, 3), padding=((2, 1), (0, 2))),
    dict(window_strides=(1, 2), padding=((1, 2), (1, 1)), lhs_dilation=(2, 1), rhs_dilation=(1, 2)),
    dict(window_strides=(1, 1), padding="VALID", feature_group_count=2),
])
def test_convolution_flops_match_xla(kwargs):
  """Padding taps are not counted, dilations and groups are: the count of XLA's cost analysis."""
  x = jnp.ones((4, 15, 17, 6))
  w = jnp.ones((5, 3, 6 // kwargs.get("feature_group_count", 1), 10))
  compiled = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
      x, w, dimension_numbers=("NHWC", "HWIO", "NHWC"), **kwargs)).lower(x, w).compile()
  comps = xla_accounting._parse_module(compiled.as_text())
  convs = [xla_accounting._conv_flops(t, a, comp["types"]) for comp in comps.values()
           for _, t, op, a in comp["instrs"] if op == "convolution"]
  assert len(convs) == 1
  assert convs[0] == xla_accounting.cost(compiled)["flops"]


def test_collectives_inside_a_loop_count_per_iteration():
  """Gradient accumulation: one all-reduce per accumulated pass."""
  devices = jax.devices()
  assert len(devices) == 8, "tests/conftest.py should simulate 8 CPU devices"
  mesh = Mesh(np.array(devices), ("data",))
  xs = jax.device_put(jnp.ones((TRIPS, 64, 32)), NamedSharding(mesh, P(None, "data")))
  def accumulated_grad(w, xs):
    step = lambda g, x: (g + jax.grad(lambda w: jnp.sum(jnp.tanh(x @ w)))(w), None)
    return jax.lax.scan(step, jnp.zeros_like(w), xs)[0]
  compiled = jax.jit(accumulated_grad, out_shardings=NamedSharding(mesh, P())).lower(
      jnp.ones((32, 32)), xs).compile()
  reduced = xla_accounting.collectives(compiled.as_text())["all-reduce"]
  assert reduced["count"] == TRIPS
  assert reduced["operand_bytes"] == TRIPS * 32 * 32 * 4


def test_tpu_loops_without_a_trip_count_annotation():
  """The TPU compiler prints no known_trip_count: the count comes from the loop condition i < 6.
  tests/golden/tpu_v5p_scan_hlo.txt is scripts/make_tpu_scan_hlo.py's output (libtpu AOT compile
  of a 6-step scan of a [256, 512] x [512, 512] matmul, which TPU HLO writes as a convolution)."""
  path = os.path.join(os.path.dirname(__file__), "golden", "tpu_v5p_scan_hlo.txt")
  with open(path) as f:
    loops = xla_accounting.loop_flops(f.read())
  assert loops["loops"] == [6]
  assert loops["missing_flops"] == 5 * 2 * 256 * 512 * 512
