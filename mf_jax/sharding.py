"""Device mesh and shardings: data parallel over every device, optional FSDP for parameters.

The mesh has axes ("data", "fsdp"). Batches are split over both axes (FSDP groups are data parallel
too); parameters and optimizer state are replicated over "data" and, with fsdp > 1, each large array
is split along one dimension over "fsdp" (XLA inserts the all-gathers and reduce-scatters).
"""
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")
MIN_FSDP_SIZE = 2 ** 12  # Smaller arrays (biases, norms) stay replicated: sharding them costs more.


def make_mesh(fsdp: int = 1, devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  if fsdp < 1 or len(devices) % fsdp:
    raise ValueError(f"sharding.fsdp={fsdp} must be >= 1 and divide the device count {len(devices)}.")
  grid = np.asarray(devices).reshape(len(devices) // fsdp, fsdp)
  return Mesh(grid, ("data", "fsdp"))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over every device; other axes whole."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def fsdp_spec(shape, fsdp: int) -> P:
  """Shards the largest dimension divisible by the FSDP size; replicates small or indivisible arrays."""
  if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < MIN_FSDP_SIZE:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % fsdp == 0:
      spec = [None] * len(shape)
      spec[dim] = "fsdp"
      return P(*spec)
  return P()


def spread_spec(shape, mesh: Mesh, dims) -> P:
  """Splits the first of `dims` that the device count divides over every device; else replicated.

  For large buffers that are not parameters (the drifting sample banks): all devices share them,
  whatever the FSDP grouping.
  """
  n = mesh.size
  for dim in dims:
    if shape[dim] % n == 0:
      spec = [None] * len(shape)
      spec[dim] = BATCH_AXES
      return P(*spec)
  return P()


def state_shardings(mesh: Mesh, abstract_state):
  """NamedShardings for a pytree of ShapeDtypeStructs (e.g. from jax.eval_shape)."""
  fsdp = mesh.shape["fsdp"]
  return jax.tree_util.tree_map(lambda a: NamedSharding(mesh, fsdp_spec(a.shape, fsdp)),
                                abstract_state)


def global_batch(local_batch, mesh: Mesh):
  """Assembles each host's numpy batch into global jax.Arrays split over the batch axes."""
  sharding = batch_sharding(mesh)
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)
