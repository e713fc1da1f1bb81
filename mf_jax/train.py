"""Training loop: set-up, resume, the step loop with its periodic actions, preemption, final save."""
import importlib
import os
import signal
import threading

import jax
from jax.sharding import NamedSharding
from absl import logging
from mf_jax import progress as periodic_actions  # TF-free ReportProgress, Profile.

import input_pipeline
from mf_jax import checkpointing, config_checks, generate, run_info, workdir_signature, writers
from mf_jax import checksum
from mf_jax import ema as ema_lib
from mf_jax import sharding as sharding_lib
from mf_jax import train_state as ts
from mf_jax import train_step as step_lib


# Key stream that no training step reaches (steps fold in their own index from 0 upwards).
INIT_STREAM = 2**31 - 1

# ---------------------------------------------------------------------------------------------
# Set-up shared by training, sampling and evaluation.

def setup_state(config, workdir: str, mode: str = "train"):
  """Validates, builds mesh/model/optimizer, and restores the newest good checkpoint if any.

  Returns (state, shardings, mesh, model, optimizer, checkpointer).
  """
  config_checks.validate_once(config, workdir, mode)  # main.py may have validated it already.
  logging.info("Workdir: %s", os.path.abspath(workdir))
  mesh = sharding_lib.make_mesh(config.sharding.fsdp)
  model = ts.build_model(config)
  optimizer = ts.make_optimizer(config)
  init_key = jax.random.fold_in(jax.random.key(config.seed), INIT_STREAM)
  state, shardings = ts.create_sharded_state(config, model, optimizer, mesh, init_key)
  ckpt = checkpointing.for_mode(config, workdir, mode)  # Training holds the workdir lock.
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
  """Grids of the method's NFE counts (Objective.grid_steps) from the first EMA parameters, to
  TensorBoard and WORKDIR/samples/."""
  steps_list = ts.objective(config).grid_steps
  if not steps_list:
    return
  if generate.decodes_with_vae(config) and not config.data.vae_path:
    logging.warning("No sample grid: set data.vae_path to decode latent samples.")
    return
  params = state.ema_params[0] if state.ema_params else state.params
  n = min(config.sample.batch_size, 64)
  images = {}
  for steps in steps_list:
    x, _ = generate.draw(config, sample_fn, params, mesh, n, steps, seed=config.sample.seed)
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


def load_frozen_networks(config, state, shardings):
  """Step 0: the values of the method's frozen networks (Objective.frozen_networks) into
  state.aux, each from its weights file or from the newest checkpoint of its workdir."""
  aux = dict(state.aux) if state.aux is not None else {}
  for frozen in ts.objective(config).frozen_networks(config):
    if frozen.workdir:
      variables = frozen.select(restore_run_parameters(frozen.workdir_config, frozen.workdir,
                                                      shardings.step.mesh))
      logging.info("%s: %s.", frozen.description, frozen.workdir)
    else:
      variables = weights_format(frozen).load_variables(frozen.path, frozen.module)
      logging.info("%s: %s.", frozen.description, frozen.path)
    aux[frozen.aux_key] = jax.device_put(variables, shardings.aux[frozen.aux_key])
  return state.replace(aux=aux) if aux else state


def weights_format(frozen):
  """The converter format module that reads a frozen network's weights file."""
  return importlib.import_module(f"mf_jax.convert.formats.{frozen.file_format}")


def restore_run_parameters(run_config, workdir, mesh):
  """The EMA parameters (else the parameters) of the newest checkpoint of a run of `run_config`.

  The whole run state (parameters, Adam moments, EMA: 43 GB for the release's MAE-640) is read
  spread over the devices of `mesh`, not replicated on each; the caller places what it keeps.
  """
  model, optimizer = ts.build_model(run_config), ts.make_optimizer(run_config)
  abstract = jax.eval_shape(lambda k: ts.init_state(run_config, model, optimizer, k),
                            jax.random.key(0))
  spread = jax.tree_util.tree_map(lambda a: NamedSharding(mesh, sharding_lib.spread_spec(
      a.shape, mesh, dims=range(a.ndim))), abstract)
  # Read only: exactly the newest checkpoint, nothing in the other run's workdir is moved.
  ckpt = checkpointing.Checkpointer(workdir, keep=1, mode="frozen", allow_unverified=True)
  restored = ckpt.restore_latest(abstract, spread) if ckpt.latest_step() is not None else None
  ckpt.close()
  if restored is None:
    raise FileNotFoundError(f"{workdir} holds no checkpoint of a method={run_config.method!r} run: "
                            "train one with the same config's section into it.")
  logging.info("Read step %d of %s.", int(restored.step), workdir)
  return restored.ema_params[0] if restored.ema_params else restored.params


def prepare_first_step(config, state, mesh, shardings):
  """Step 0 of a new run: frozen networks loaded, then the method's own host work (queues)."""
  state = load_frozen_networks(config, state, shardings)
  return ts.objective(config).prepare_state(
      config, state, mesh, shardings, lambda: input_pipeline.train_iterator(config, 0),
      step_lib.prepare_batch)


def check_finite(state, metrics):
  if int(state.nonfinite_step) >= 0:
    raise step_lib.nonfinite_error(state, jax.device_get(metrics))


# ---------------------------------------------------------------------------------------------
# The loop.

def train_and_evaluate(config, workdir: str):
  """Trains config.method until config.train.num_steps, resuming from WORKDIR's newest good
  checkpoint. Returns the final state."""
  state, shardings, mesh, model, optimizer, ckpt = setup_state(config, workdir)
  start_step, num_steps = int(state.step), config.train.num_steps
  if start_step == 0:
    state = prepare_first_step(config, state, mesh, shardings)
  run_info.write(workdir, config, start_step)
  writer = writers.create_writer(workdir)
  if start_step == 0:
    writer.write_hparams({k: v for k, v in config.to_dict().items() if isinstance(v, (int, float, str))})

  train_step = step_lib.jit_train_step(
      step_lib.make_train_step(config, model, optimizer, mesh), mesh, shardings)
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
  logging.info("Finished at step %d; parameter checksum %.9e and state sha256 %s", int(state.step),
               ts.params_checksum(state.params), checksum.state_sha256(state))
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
  index = ema_lib.ema_index(config, "sample")
  params = state.ema_params[index] if s.use_ema else state.params
  sample_fn = generate.make_sampler(config, model, mesh)
  x, labels = generate.draw(config, sample_fn, params, mesh, s.num_samples, s.num_steps, s.seed,
                            s.cfg_scale)
  images = generate.to_uint8(x, config)
  copy = "raw"
  if s.use_ema:  # With several EMA copies, the file names the one sampled ("ema_2000kimg").
    copy = f"ema_{ema_lib.ema_names(config)[index]}" if ema_lib.num_emas(config) > 1 else "ema"
  tag = f"step_{int(state.step):08d}_{s.num_steps}nfe_{copy}"
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
