"""Drifting Models as a plug-in: per-class real-sample queues, frozen feature networks, the field.

The loss and its gradient are mf_jax/drifting.py (with mf_jax/drifting_field.py); this module says
how the trainer feeds them: every batch is pushed into per-class queues on device, and each step
draws its classes, their positives and guidance negatives from the queues.
"""
import os

import jax
import jax.numpy as jnp
from absl import logging

from mf_jax import class_queues, drifting, drifting_config, drifting_features, networks
from mf_jax import sharding as sharding_lib
from mf_jax.errors import ConfigError
from mf_jax.models import convnext
from mf_jax.objectives import base, registry
from mf_jax.objectives import mae as mae_objective

# Key stream of the queue filling before step 0 (minus the batch index); no step reaches it.
QUEUE_FILL_STREAM = 2**31 - 2
CONVNEXT_HOWTO = ("convert facebook/convnextv2-base-22k-224 (a local Hugging Face folder) with "
                  "`python -m mf_jax.convert convnext --src=HF_DIR --out=FILE.npz "
                  "--config=CONFIG`")


def mae_run_config(config):
  """The config of the drifting run's feature-encoder pretraining (its `mae` section, method mae)."""
  mae = config.copy_and_resolve_references()
  mae.method = "mae"
  return mae


def uses_uncond_queue(config) -> bool:
  """Guidance negatives come from the unconditional queue (else: other classes of the step)."""
  return config.drifting.num_unc > 0 and config.drifting.uncond_queue_len > 0


def push_queues(aux, x, labels):
  """Every real sample of the batch into its class queue and into the unconditional queue."""
  aux = dict(aux, queues=class_queues.push(aux["queues"], x, labels))
  if aux.get("uncond_queue") is not None:
    aux["uncond_queue"] = class_queues.push_any(aux["uncond_queue"], x, labels)
  return aux


def drifting_inputs(aux, x, labels, key, config):
  """Pushes the batch into the queues, then draws the step's N_c classes, N_pos real samples of
  each and N_unc guidance negatives per class. -> (aux, {"positives", "uncond"}, classes)."""
  k_classes, k_draw, k_unc = jax.random.split(key, 3)
  aux = push_queues(aux, x, labels)
  d = config.drifting
  classes = class_queues.sample_classes(k_classes, max(config.data.num_classes, 1),
                                        d.classes_per_step)
  real = {"positives": class_queues.draw(aux["queues"], k_draw, classes, d.num_pos), "uncond": None}
  if aux.get("uncond_queue") is not None:
    real["uncond"] = class_queues.draw(aux["uncond_queue"], k_unc, jnp.zeros_like(classes),
                                       d.num_unc)
  return aux, real, classes


def split_leading_axis(mesh):
  """tree -> tree with every array's leading axis split over all devices of `mesh`.

  Inside jit this pins the layout GSPMD propagates from: each device then holds (and computes)
  only its share. Arrays whose leading axis the device count does not divide are padded by XLA.
  """
  sharding = sharding_lib.batch_sharding(mesh)
  def split(tree):
    return jax.tree_util.tree_map(
        lambda a: jax.lax.with_sharding_constraint(a, sharding) if jnp.ndim(a) else a, tree)
  return split


def drifting_value_and_grad(model, config, encoder_params=None, mesh=None,
                            convnext_variables=None):
  """(params, real {"positives": [N_c, N_pos, ...], "uncond": [N_c, N_unc, ...] or None},
  classes [N_c], key) -> ((loss, metrics), grads).

  Data parallel over the classes of the step: the labels, their real samples, the noise, the
  generated samples and every feature set are split over all devices of `mesh` along the class
  (or class-major sample) axis, so each device generates, featurises and computes the field for
  its own labels; only global statistics and the gradients are reduced across devices. With
  drifting.accum_classes_per_device, each device takes that many classes per pass and the
  gradient is accumulated over the passes (drifting.drifting_value_and_grad).
  """
  feature_fn = drifting_features.drifting_feature_fn(config, encoder_params, convnext_variables)
  split = split_leading_axis(mesh) if mesh is not None else (lambda tree: tree)
  accum_steps = drifting.accumulation_steps(config.drifting, mesh.size if mesh is not None else 1)

  def sharded_features(x):
    return split(feature_fn(split(x)))

  def sharded_generator(params, noise, alpha, labels):
    return split(networks.generator_fn(model, params)(*split((noise, alpha, labels))))

  def value_and_grad(params, real, classes, key):
    return drifting.drifting_value_and_grad(
        sharded_generator, params, split(real["positives"]), split(classes), key, config.drifting,
        feature_fn=sharded_features, uncond_real=split(real["uncond"]), accum_steps=accum_steps)
  return value_and_grad


class Drifting(base.Objective):
  """A one-step generator x = f(e, alpha, label) trained by the drifting field."""
  name = "drifting"
  grid_steps = (1,)
  config_sections = {"drifting": drifting_config.CONFIG}
  reads_sections = ("drifting", "mae")

  def condition_names(self, config):
    return ("alpha",)

  # --- State.
  def frozen_networks(self, config):
    d, frozen = config.drifting, []
    if d.feature_encoder_workdir:
      mae = mae_run_config(config)
      compute_dtype = networks.DTYPES[mae.mae.compute_dtype]
      frozen.append(base.FrozenNetwork(
          aux_key="encoder", workdir=d.feature_encoder_workdir, workdir_config=mae,
          placeholder=lambda key: networks.frozen_encoder_variables(networks.frozen_placeholder(
              networks.mae_model(mae).init, key, *mae_objective.MAE().example_inputs(mae)),
              compute_dtype),
          select=lambda params: networks.frozen_encoder_variables(params, compute_dtype),
          description="MAE feature encoder (drifting.feature_encoder_workdir)"))
    if d.use_convnext:
      model = networks.convnext_model(config)
      frozen.append(base.FrozenNetwork(
          aux_key="convnext", path=d.convnext_path, file_format="convnext", module=model,
          field="drifting.convnext_path",
          fix=("set drifting.convnext_depths/convnext_dims to the file's size, or "
               f"{CONVNEXT_HOWTO}"),
          placeholder=lambda key: networks.frozen_placeholder(model.init, key,
                                                              convnext.example_input()),
          description=(f"ConvNeXt-V2 features (depths {tuple(d.convnext_depths)}, dims "
                       f"{tuple(d.convnext_dims)})")))
    return tuple(frozen)

  def init_aux(self, config, key):
    d, data = config.drifting, config.data
    shape = (data.image_size, data.image_size, data.channels)
    bank = class_queues.STORAGE_DTYPES[d.bank_dtype]
    aux = {"queues": class_queues.init(max(data.num_classes, 1), d.queue_len, shape, bank),
           "uncond_queue": (class_queues.init(1, d.uncond_queue_len, shape, bank)
                            if uses_uncond_queue(config) else None),
           "encoder": None}
    for frozen in self.frozen_networks(config):  # Placeholders; loaded by the trainer at step 0.
      aux[frozen.aux_key] = frozen.placeholder(key)
    return aux

  def prepare_state(self, config, state, mesh, shardings, make_batches, prepare_batch):
    """Before the first step, pushes the stream into the queues until every class holds
    drifting.num_pos samples (and the unconditional queue num_unc).

    Waiting (rather than drawing with replacement from whatever a class has, as the official release
    does from a host-side bank) keeps N_pos distinct positives per class from the first step - the
    paper's ablation shows few distinct positives hurt - and costs one pass over the data at most:
    class-ordered shards reach every class within an epoch. The wait is bounded by
    drifting.fill_max_examples. The queues then live in the checkpoint; a resumed run does not refill.
    """
    d = config.drifting
    need, max_examples = d.num_pos, d.fill_max_examples
    push = jax.jit(lambda aux, batch, key: push_queues(
        aux, prepare_batch(batch, key, config), batch["label"]),
        out_shardings=shardings.aux, donate_argnums=(0,))
    ready = jax.jit(lambda aux: class_queues.ready(aux["queues"], need) & (
        class_queues.ready(aux["uncond_queue"], d.num_unc) if aux.get("uncond_queue") is not None
        else True))
    aux, batches = state.aux, None
    batch_size = config.train.global_batch_size
    num_batches = -(-max_examples // batch_size)
    for i in range(num_batches + 1):
      if bool(ready(aux)):
        logging.info("Class queues hold >= %d samples per class after %d examples.", need,
                     i * batch_size)
        return state.replace(aux=aux)
      if i == num_batches:
        break
      if i and i % max(1, 100_000 // batch_size) == 0:
        counts = jax.device_get(aux["queues"].count)
        logging.info("Filling class queues: %d examples read, %d of %d classes hold %d samples.",
                     i * batch_size, int((counts >= need).sum()), len(counts), need)
      batches = batches or make_batches()
      batch = sharding_lib.global_batch(next(batches), mesh)
      key = jax.random.fold_in(jax.random.key(config.seed), QUEUE_FILL_STREAM - i)
      aux = push(aux, batch, key)
    counts = jax.device_get(aux["queues"].count)
    short = [c for c in range(len(counts)) if counts[c] < need]
    raise ValueError(
        f"drifting.fill_max_examples={max_examples}: after {num_batches * batch_size} examples "
        f"{len(short)} of {len(counts)} classes still hold fewer than drifting.num_pos={need} "
        f"samples (classes {short[:10]}{'...' if len(short) > 10 else ''} with counts "
        f"{[int(counts[c]) for c in short[:10]]}). Raise drifting.fill_max_examples to cover an "
        "epoch of the data, lower drifting.num_pos, or check data.num_classes against the labels.")

  # --- Step and sampling.
  def make_step_grads(self, config, model, mesh):
    if mesh is None:  # The classes are split over the mesh the step runs on.
      mesh = sharding_lib.make_mesh(config.sharding.fsdp)
    def step_grads(params, aux, x, labels, augment_labels, k_loss, k_aux):
      del augment_labels
      aux, real, classes = drifting_inputs(aux, x, labels, k_aux, config)
      # The frozen networks' parameters travel in the state: arguments, not compile-time constants.
      grad_fn = drifting_value_and_grad(model, config, aux["encoder"], mesh, aux.get("convnext"))
      return aux, *grad_fn(params, real, classes, k_loss)
    return step_grads

  def make_sample_fn(self, config, model):
    def sample(params, noise, labels, num_steps, cfg_scale):
      del num_steps  # One step always; the guidance scale is the alpha condition.
      alpha = jnp.full((noise.shape[0],), cfg_scale, noise.dtype)
      return networks.generator_fn(model, params)(noise, alpha, labels)
    return sample

  # --- Checks.
  def validate(self, config):
    drifting_config.check_config(config)

  def validate_files(self, config):
    """Training with ConvNeXt features reads its weights (sampling and evaluation do not); the
    file's fit is checked with every frozen network's (config_checks)."""
    d = config.drifting
    if not d.use_convnext:
      return
    if not d.convnext_path:
      raise ConfigError("drifting.use_convnext=True but drifting.convnext_path is empty: "
                        f"{CONVNEXT_HOWTO} and set --config.drifting.convnext_path=FILE.npz, or "
                        "set drifting.use_convnext=False.")
    if not os.path.isfile(d.convnext_path):
      raise ConfigError(f"drifting.convnext_path={d.convnext_path!r} is not a file: "
                        f"{CONVNEXT_HOWTO}, or set drifting.use_convnext=False.")

  def check_devices(self, config, num_devices):
    try:
      drifting.accumulation_steps(config.drifting, num_devices)
    except ValueError as e:
      raise ConfigError(str(e)) from None

  # --- Benchmarks.
  def images_per_step(self, config):
    return config.drifting.classes_per_step * config.drifting.num_neg

  def grown_batch(self, config):
    bigger = config.copy_and_resolve_references()
    bigger.drifting.classes_per_step = 2 * config.drifting.classes_per_step
    return bigger

  def with_frozen_placeholders(self, config):
    """For compiling without files: a frozen MAE of the configured shapes (zeros)."""
    if not config.drifting.feature_encoder_workdir:
      config.drifting.feature_encoder_workdir = "(abstract encoder)"
    return config

  def benchmark_facts(self, config, num_devices):
    return {"feature_encoder": bool(config.drifting.feature_encoder_workdir),
            # Gradient-accumulation passes on this many devices (1 = one pass).
            "accum_passes": drifting.accumulation_steps(config.drifting, num_devices)}


registry.register(Drifting())
