"""Training loop: set-up, resume, the step loop with its periodic actions, preemption, final save."""
import os
import signal
import threading

import jax
from jax.sharding import NamedSharding
from absl import logging
from mf_jax import progress as periodic_actions  # TF-free ReportProgress, Profile.

import input_pipeline
from mf_jax import checkpointing, config_checks, generate, run_info, workdir_signature, writers
from mf_jax import sharding as sharding_lib
from mf_jax import train_state as ts
from mf_jax import train_step as step_lib


# Key streams that no training step reaches (steps fold in their own index from 0 upwards).
INIT_STREAM = 2**31 - 1
QUEUE_FILL_STREAM = 2**31 - 2  # Minus the batch index while filling the class queues.

# ---------------------------------------------------------------------------------------------
# Set-up shared by training, sampling and evaluation.

def setup_state(config, workdir: str, mode: str = "train"):
  """Validates, builds mesh/model/optimizer, and restores the newest good checkpoint if any.

  Returns (state, shardings, mesh, model, optimizer, checkpointer).
  """
  config_checks.validate(config, workdir, mode)
  logging.info("Workdir: %s", os.path.abspath(workdir))
  mesh = sharding_lib.make_mesh(config.sharding.fsdp)
  model = ts.build_model(config)
  optimizer = ts.make_optimizer(config)
  init_key = jax.random.fold_in(jax.random.key(config.seed), INIT_STREAM)
  state, shardings = ts.create_sharded_state(config, model, optimizer, mesh, init_key)
  ckpt = checkpointing.Checkpointer(workdir, config.train.keep_checkpoints)
  restored = ckpt.restore_latest(state, shardings)
  if restored is not None:
    state = restored
    logging.info("Resumed from the checkpoint at step %d.", int(state.step))
  if mode == "train":
    workdir_signature.write(config, workdir)
  return state, shardings, mesh, model, optimizer, ckpt


class PreemptionFlag:
  """Set by SIGTERM (the usual preemption notice); the loop saves and exits at the next step.

  `restore()` puts the previous handler back once training returns.
  """

  def __init__(self):
    self.event = threading.Event()
    self.previous = None
    if threading.current_thread() is threading.main_thread():
      self.previous = signal.signal(signal.SIGTERM, lambda *_: self.event.set())

  def __bool__(self):
    return self.event.is_set()

  def restore(self):
    if self.previous is not None:
      signal.signal(signal.SIGTERM, self.previous)


# ---------------------------------------------------------------------------------------------
# Periodic actions.

def write_sample_grids(config, sample_fn, state, mesh, writer, workdir, step):
  """1-NFE and 2-NFE grids from the first EMA parameters, to TensorBoard and WORKDIR/samples/."""
  params = state.ema_params[0] if state.ema_params else state.params
  n = min(config.sample.batch_size, 64)
  images = {}
  if config.method == "mae":
    return
  for steps in ((1,) if config.method == "drifting" else (1, 2)):
    x, _ = generate.draw(config, sample_fn, params, mesh, n, steps, seed=config.sample.seed)
    if generate.decodes_with_vae(config) and not config.data.vae_path:
      logging.warning("No sample grid: set data.vae_path to decode latent samples.")
      return
    img = generate.grid(generate.to_uint8(x, config), cols=8)
    images[f"samples_{steps}nfe"] = img[None]
    if jax.process_index() == 0:
      path = os.path.join(workdir, "samples", f"step_{step:08d}_{steps}nfe.png")
      generate.save_png(img, path)
      logging.info("Wrote sample grid %s", path)
  writer.write_images(step, images)


def build_evaluators(config, model, mesh, sample_fn):
  """Evaluator plug-ins from eval/evaluators.py; none unless config.eval.every_steps > 0."""
  if not config.eval.every_steps:
    return []
  from eval import evaluators as eval_lib
  return eval_lib.build_evaluators(config, model, mesh, sample_fn)


def run_evaluators(evaluators, state, step, writer):
  """Each evaluator maps (state, step) to scalars, written to TensorBoard and metrics.jsonl."""
  for evaluator in evaluators:
    scalars = evaluator(state, step)
    logging.info("Evaluation %s at step %d: %s", evaluator.name, step, scalars)
    writer.write_scalars(step, scalars)


def fill_class_queues(config, state, mesh, shardings):
  """Drifting: before the first step, pushes the stream into the queues until every class holds
  drifting.num_pos samples (and the unconditional queue num_unc).

  Waiting (rather than drawing with replacement from whatever a class has, as the official release
  does from a host-side bank) keeps N_pos distinct positives per class from the first step - the
  paper's ablation shows few distinct positives hurt - and costs one pass over the data at most:
  class-ordered shards reach every class within an epoch. The wait is bounded by
  drifting.fill_max_examples. The queues then live in the checkpoint; a resumed run does not refill.
  """
  from mf_jax import class_queues
  d = config.drifting
  need, max_examples = d.num_pos, d.fill_max_examples
  push = jax.jit(lambda aux, batch, key: step_lib.push_queues(
      aux, step_lib.prepare_batch(batch, key, config), batch["label"]),
      out_shardings=shardings.aux, donate_argnums=(0,))
  ready = jax.jit(lambda aux: class_queues.ready(aux["queues"], need) & (
      class_queues.ready(aux["uncond_queue"], d.num_unc) if aux.get("uncond_queue") is not None
      else True))
  batches = input_pipeline.train_iterator(config, 0)
  aux = state.aux
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
    batch = sharding_lib.global_batch(next(batches), mesh)
    key = jax.random.fold_in(jax.random.key(config.seed), QUEUE_FILL_STREAM - i)
    aux = push(aux, batch, key)
  counts = jax.device_get(aux["queues"].count)
  short = [c for c in range(len(counts)) if counts[c] < need]
  raise ValueError(
      f"drifting.fill_max_examples={max_examples}: after {num_batches * batch_size} examples "
      f"{len(short)} of {len(counts)} classes still hold fewer than drifting.num_pos={need} samples "
      f"(classes {short[:10]}{'...' if len(short) > 10 else ''} with counts "
      f"{[int(counts[c]) for c in short[:10]]}). Raise drifting.fill_max_examples to cover an epoch "
      "of the data, lower drifting.num_pos, or check data.num_classes against the labels.")


def load_feature_encoder(config, shardings):
  """The frozen MAE encoder for drifting: EMA parameters of the newest checkpoint in
  drifting.feature_encoder_workdir, a run of the same config's `mae` section (method="mae")."""
  workdir = config.drifting.feature_encoder_workdir
  mae = config.copy_and_resolve_references()
  mae.method = "mae"
  model, optimizer = ts.build_model(mae), ts.make_optimizer(mae)
  abstract = jax.eval_shape(lambda k: ts.init_state(mae, model, optimizer, k), jax.random.key(0))
  # The whole MAE run state (parameters, Adam moments, EMA: 43 GB for MAE-640) is read spread
  # over the run's devices, not replicated on each, and only the EMA encoder is then replicated.
  mesh = shardings.step.mesh
  mae_shardings = jax.tree_util.tree_map(lambda a: NamedSharding(mesh, sharding_lib.spread_spec(
      a.shape, mesh, dims=range(a.ndim))), abstract)
  ckpt = checkpointing.Checkpointer(workdir, keep=1)
  restored = (ckpt.restore_latest(abstract, mae_shardings) if ckpt.latest_step() is not None
              else None)
  ckpt.close()
  if restored is None:
    raise FileNotFoundError(f"drifting.feature_encoder_workdir={workdir} holds no MAE checkpoint: "
                            "pretrain one with the same config's mae section and method='mae'.")
  logging.info("Feature encoder: MAE step %d from %s.", int(restored.step), workdir)
  params = restored.ema_params[0] if restored.ema_params else restored.params
  return jax.device_put(ts.frozen_encoder_variables(params, ts.DTYPES[mae.mae.compute_dtype]),
                        shardings.aux["encoder"])


def load_convnext(config, shardings):
  """The frozen ConvNeXt-V2 of drifting.use_convnext from drifting.convnext_path (see
  mf_jax/models/convnext.py for the file; config_checks has checked its shapes)."""
  from mf_jax.models import convnext  # pylint: disable=g-import-not-at-top
  d = config.drifting
  variables = convnext.load_variables(d.convnext_path, ts.convnext_model(config))
  logging.info("ConvNeXt features: %s (depths %s, dims %s).", d.convnext_path,
               tuple(d.convnext_depths), tuple(d.convnext_dims))
  return jax.device_put(variables, shardings.aux["convnext"])


def check_finite(state, metrics):
  if int(state.nonfinite_step) >= 0:
    raise step_lib.nonfinite_error(state, jax.device_get(metrics))


# ---------------------------------------------------------------------------------------------
# The loop.

def train_and_evaluate(config, workdir: str, objective=None):
  """Trains until config.train.num_steps, resuming from WORKDIR's newest good checkpoint.

  Returns the final state. `objective` replaces the MeanFlow loss (e.g. the drifting objective).
  """
  state, shardings, mesh, model, optimizer, ckpt = setup_state(config, workdir)
  start_step, num_steps = int(state.step), config.train.num_steps
  if config.method == "drifting" and start_step == 0:
    if config.drifting.feature_encoder_workdir:
      state = state.replace(aux=dict(state.aux, encoder=load_feature_encoder(config, shardings)))
    if config.drifting.use_convnext:
      state = state.replace(aux=dict(state.aux, convnext=load_convnext(config, shardings)))
    state = fill_class_queues(config, state, mesh, shardings)
  run_info.write(workdir, config, start_step)
  writer = writers.create_writer(workdir)
  if start_step == 0:
    writer.write_hparams({k: v for k, v in config.to_dict().items() if isinstance(v, (int, float, str))})

  train_step = step_lib.jit_train_step(
      step_lib.make_train_step(config, model, optimizer, objective, mesh), mesh, shardings)
  sample_fn = generate.make_sampler(config, model, mesh)
  evaluators = build_evaluators(config, model, mesh, sample_fn)
  batches = input_pipeline.train_iterator(config, start_step)
  preempted = PreemptionFlag()

  hooks = [periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer,
                                           every_steps=config.train.log_every)]
  if config.train.profile and jax.process_index() == 0:
    hooks.append(periodic_actions.Profile(logdir=workdir, first_profile=start_step + 5, num_profile_steps=5))

  logging.info("Training steps %d..%d on %d devices (%d processes), mesh %s.", start_step, num_steps,
               jax.device_count(), jax.process_count(), dict(mesh.shape))
  step = start_step
  metrics = None
  try:
    while step < num_steps:
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        batch = sharding_lib.global_batch(next(batches), mesh)
        state, metrics = train_step(state, batch)
      step += 1
      for hook in hooks:
        hook(step)
      last = step == num_steps
      if step % config.train.log_every == 0 or last:
        check_finite(state, metrics)
        writer.write_scalars(step, {k: float(v) for k, v in jax.device_get(metrics).items()})
      if config.train.sample_every and (step % config.train.sample_every == 0 or last):
        write_sample_grids(config, sample_fn, state, mesh, writer, workdir, step)
      if evaluators and (step % config.eval.every_steps == 0 or last):
        run_evaluators(evaluators, state, step, writer)
      stop = bool(preempted) or ckpt.reached_preemption(step)
      if step % config.train.checkpoint_every == 0 or last or stop:
        check_finite(state, metrics)  # Never save past a non-finite step.
        ckpt.save(step, state)
      if stop:
        logging.warning("Preemption notice: saved step %d, exiting.", step)
        break
  finally:
    # Whatever stops the loop, a save already under way is finished, never left half-written.
    preempted.restore()
    writer.flush()
    ckpt.wait()
    ckpt.close()
  logging.info("Finished at step %d; parameter checksum %.9e", int(state.step),
               ts.params_checksum(state.params))
  return state


def restore_trained(config, workdir: str, mode: str):
  """(state, mesh, model) from the newest checkpoint, for the modes that need a trained model."""
  state, _, mesh, model, _, ckpt = setup_state(config, workdir, mode)
  found = ckpt.latest_step()
  ckpt.close()
  if found is None:
    raise FileNotFoundError(f"--mode={mode} found no checkpoint in {ckpt.directory}: train first.")
  return state, mesh, model


def sample_to_files(config, workdir: str):
  """--mode=sample: newest checkpoint -> config.sample.num_samples samples -> .npz and PNG grid."""
  state, mesh, model = restore_trained(config, workdir, "sample")
  s = config.sample
  params = state.ema_params[s.ema_index] if s.use_ema else state.params
  sample_fn = generate.make_sampler(config, model, mesh)
  x, labels = generate.draw(config, sample_fn, params, mesh, s.num_samples, s.num_steps, s.seed,
                            s.get("cfg_scale", 1.0))
  images = generate.to_uint8(x, config)
  tag = f"step_{int(state.step):08d}_{s.num_steps}nfe_{'ema' if s.use_ema else 'raw'}"
  out = os.path.join(workdir, "samples", f"{tag}.npz")
  if jax.process_index() == 0:
    generate.save_npz(images, labels, out)
    generate.save_png(generate.grid(images[:100], cols=10, upscale=4 if images.shape[1] < 32 else 1),
                      os.path.join(workdir, "samples", f"{tag}.png"))
  logging.info("Wrote %d samples to %s", len(images), out)
  return out


def evaluate_checkpoint(config, workdir: str):
  """--mode=eval: runs every evaluator once on the newest checkpoint and logs the numbers."""
  state, mesh, model = restore_trained(config, workdir, "eval")
  if not config.eval.every_steps:
    config.eval.every_steps = 1  # --mode=eval always evaluates (the field exists, so a locked config allows it).
  evaluators = build_evaluators(config, model, mesh, generate.make_sampler(config, model, mesh))
  writer = writers.create_writer(workdir)
  run_evaluators(evaluators, state, int(state.step), writer)
  writer.flush()
