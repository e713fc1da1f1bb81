"""Test-wide setup: simulate 8 CPU devices so sharding is exercised without accelerators.

XLA reads XLA_FLAGS once, when the backend starts, so this must run before anything imports jax.
"""
import os
import sys
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Many tests compile the same tiny programs (and subprocess tests inherit these variables): a
# session-wide persistent compilation cache turns repeat compiles of ~10-40 s into ~1 s.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="mf_jax_test_xla_cache_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
# TensorFlow is only used for tf.data; keep its logging quiet in test output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Make the project root importable no matter where pytest is started from.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


import pytest  # noqa: E402  (after the environment is set)


@pytest.fixture
def x64():
  """Runs a test with 64-bit JAX types: jnp literals and random draws default to float64.

  For tests whose point is exactness (a formula, two orderings of the same mathematics); see
  tests/README.md on how tolerances are chosen.
  """
  import jax
  with jax.enable_x64(True):
    yield
