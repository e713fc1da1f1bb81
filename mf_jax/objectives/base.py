"""The interface every training method implements, and the frozen-network declaration.

A method is a plug-in: a subclass of `Objective` registered under a name (`objectives.register`);
`config.method` picks it. The trainer (mf_jax/train*.py), the sampler (mf_jax/generate.py) and the
benchmarks call only these methods, so adding a method adds files and edits none.

Conventions shared by all methods: images x [B, H, W, C] in data space; labels [B] int32, the null
(unconditional) label being data.num_classes; t = 0 is data and t = 1 is noise for flow methods.
"""
import dataclasses
from typing import Any, Callable, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from mf_jax import networks

Array = jax.Array
# (params, aux, x [B,H,W,C], labels [B], augment_labels [B, 6] or None, loss key, aux key)
#   -> (aux, (loss, metrics), grads)
StepGrads = Callable[..., Tuple[Any, Tuple[Array, Dict[str, Array]], Any]]
# (params, noise [B,H,W,C], labels [B], num_steps, cfg_scale) -> samples [B,H,W,C]
SampleFn = Callable[..., Array]


@dataclasses.dataclass(frozen=True)
class FrozenNetwork:
  """A pretrained network an objective reads but never trains, held in `TrainState.aux[aux_key]`.

  The state is created with zeros of the right shapes (`placeholder`); at step 0 the trainer loads
  the values once (train.load_frozen_networks), and checkpoints carry them from then on. Exactly one
  source: `path`, a weights file of converter format `file_format` (mf_jax/convert/formats/<name>.py:
  its `load_variables(path, module)` and `file_problems(path, module)`), checked before training
  starts; or `workdir`, the newest checkpoint of a run of `workdir_config`, whose EMA parameters
  pass through `select(params)`.
  """
  aux_key: str
  placeholder: Callable[[Array], Any]  # key -> variables of zeros (nothing is initialised).
  description: str = ""
  path: str = ""
  file_format: str = ""
  module: Any = None  # The Flax module the file's variables are for.
  field: str = ""  # The config field that names the file, for error messages.
  fix: str = ""  # How to make the file, for error messages.
  workdir: str = ""
  workdir_config: Any = None
  select: Callable[[Any], Any] = lambda params: params


def loss_step_grads(loss: Callable[..., Tuple[Array, Dict[str, Array]]]) -> StepGrads:
  """The StepGrads of a method with no state of its own: the gradient of
  loss(params, x, labels, key) -> (loss, metrics) with the step's loss key."""
  def step_grads(params, aux, x, labels, augment_labels, k_loss, k_aux):
    del augment_labels, k_aux
    return aux, *jax.value_and_grad(loss, has_aux=True)(params, x, labels, k_loss)
  return step_grads


class Objective:
  """One training method: its network's conditions, its step, its sampler, its state and checks.

  Subclasses override what differs; the defaults describe a method that trains `model.name` on
  batches (x, labels) with a plain loss and no extra state.
  """
  name: str = ""
  # Sample grids during training: one per NFE count listed (() = the method does not sample).
  grid_steps: Tuple[int, ...] = (1,)
  # Config sections the method declares ({name: {field: config_fields.Field}}), assembled into
  # every config by mf_jax/config_schema.py, and the sections it reads besides the shared ones
  # (data, model, optim, train, ...): config_checks refuses a changed method-specific knob of a
  # section the method ignores.
  config_sections: Dict[str, dict] = {}
  reads_sections: Tuple[str, ...] = ()
  # The network gets EDM augmentation labels (augment.enabled; the CIFAR-10 U-Net recipe).
  takes_augment_labels: bool = False
  # The sampler takes a guidance interval (t_min, t_max) as a sixth argument (iMF).
  samples_with_interval: bool = False

  # --- The network.
  def condition_names(self, config) -> Tuple[str, ...]:
    """The scalar conditions the network embeds besides the label, in call order."""
    raise NotImplementedError

  def build_model(self, config) -> nn.Module:
    return networks.build_network(config, self.condition_names(config))

  def example_inputs(self, config, batch_size: int = 1) -> tuple:
    """Dummy arguments of model.init / model.apply with the shapes the step uses."""
    conditions = tuple(jnp.zeros((batch_size,), jnp.float32)
                       for _ in self.condition_names(config))
    return (networks.example_image(config, batch_size), conditions,
            jnp.zeros((batch_size,), jnp.int32))

  # --- Extra state (TrainState.aux) and host work before the first step.
  def frozen_networks(self, config) -> Tuple[FrozenNetwork, ...]:
    """Pretrained networks the step reads (loaded into aux at step 0 by the trainer)."""
    return ()

  def init_aux(self, config, key: Array) -> Any:
    """The method's state besides parameters, optimizer and EMA (queues, frozen networks). Its
    entries are sharded like parameters, unless an entry has a `layout(mesh)` method giving its
    shardings (as drifting's class queues do)."""
    return None

  def prepare_state(self, config, state, mesh, shardings, make_batches, prepare_batch):
    """Host work at step 0, after the frozen networks are loaded (e.g. filling sample queues).

    make_batches() opens the training stream from step 0 (host batches); prepare_batch(batch, key,
    config) is the step's device-side transform of one. Returns the state."""
    return state

  # --- The step.
  def make_step_grads(self, config, model, mesh) -> StepGrads:
    """The step's (aux, (loss, metrics), grads), traced inside the jitted train step. `mesh` is the
    mesh the step is compiled for (None: all devices)."""
    raise NotImplementedError

  # --- Sampling.
  def make_sample_fn(self, config, model) -> Optional[SampleFn]:
    """(params, noise, labels, num_steps, cfg_scale) -> samples in data space, traced in a jit;
    None for a method that does not generate (then set grid_steps = ())."""
    return None

  # --- Checks (config_checks calls these before anything is compiled or written).
  def validate(self, config) -> None:
    """Cross-field rules of the method's sections; raise config_checks-style errors."""

  def validate_files(self, config) -> None:
    """Training only: the method's files (frozen weights) exist and fit."""

  def check_devices(self, config, num_devices: int) -> None:
    """Rules involving the device count (e.g. how the method splits its step)."""

  # --- What benchmarks report.
  def images_per_step(self, config) -> int:
    """Generated (or trained-on) images per step, the unit of FLOPs per image."""
    return config.train.global_batch_size

  def grown_batch(self, config):
    """A copy of config with twice the images per step (benchmarks fit memory per image)."""
    bigger = config.copy_and_resolve_references()
    bigger.train.global_batch_size = 2 * config.train.global_batch_size
    return bigger

  def with_frozen_placeholders(self, config):
    """config (a resolved copy) set to compile with zeros for frozen networks whose files are absent
    (benchmarks compile steps on abstract inputs and read no files)."""
    return config

  def benchmark_facts(self, config, num_devices: int) -> dict:
    """Method-specific keys of a benchmark row (e.g. guided, accumulation passes)."""
    return {}
