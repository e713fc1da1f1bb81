"""The jitted train step: batch preparation, objective, optimizer update, EMA, non-finite guard.

Randomness comes from fold_in(seed, step), so a resumed run draws exactly the numbers the
uninterrupted run would have drawn at the same step.
"""
import jax
import jax.numpy as jnp
import optax

from mf_jax import augment, class_queues, drifting, meanflow
from mf_jax.models import convnext, feature_encoder, mae_resnet, release_features
from mf_jax import sharding as sharding_lib
from mf_jax.train_state import TrainState, generator_fn, meanflow_u_fn, update_ema

NONFINITE_LOSS, NONFINITE_GRAD = "loss", "grad_norm"


AUGMENT_STREAM = 1  # fold_in(data key, 1): EDM augmentation of the batch.


def step_key(seed: int, step) -> jax.Array:
  return jax.random.fold_in(jax.random.key(seed), step)


def prepare_batch(batch, key, config) -> jax.Array:
  """Device-side data transforms: latent posterior sampling and flips, or pixel flips. -> x [B,H,W,C]."""
  if "x_std" in batch:
    from input_pipeline.latents import draw_latents  # Latent datasets only.
    return draw_latents(batch, key, config.data.latent_scale, config.data.random_flip)
  x = batch["x"]
  if config.data.random_flip:
    flip = jax.random.bernoulli(key, 0.5, (x.shape[0],))
    x = jnp.where(flip[:, None, None, None], x[:, :, ::-1], x)
  return x


DROPOUT_STREAM = 1  # fold_in(loss key, 1): dropout masks, independent of the loss's own split.


def meanflow_objective(model, config, augment_labels=None):
  """(params, x, labels, key) -> (loss, metrics) for the MeanFlow objective.

  augment_labels [B, 6] (EDM augmentation of x): the network sees them; `labels` is then replaced
  by row indices (see meanflow_u_fn). A U-Net with dropout gets its dropout key here (train only).
  """
  uses_dropout = config.model.name == "unet" and config.model.unet.dropout > 0
  def loss_fn(params, x, labels, key):
    dropout_key = jax.random.fold_in(key, DROPOUT_STREAM) if uses_dropout else None
    if augment_labels is not None:
      labels = jnp.arange(x.shape[0], dtype=jnp.int32)
    u_fn = meanflow_u_fn(model, params, augment_labels, dropout_key)
    return meanflow.meanflow_loss(u_fn, x, labels, key, config.meanflow)
  return loss_fn


def drifting_feature_fn(config, encoder_params, convnext_variables=None):
  """Raw samples, or the frozen encoder's multi-scale statistics plus the raw samples; with
  ConvNeXt variables (drifting.use_convnext, pixels) also its feature sets, as the release's
  pixel configs: the MAE's sets and ConvNeXt's side by side, each normalised on its own."""
  from mf_jax.train_state import convnext_model, mae_model
  extra = ()
  if convnext_variables is not None:
    extra = (convnext.convnext_feature_fn(convnext_model(config), convnext_variables),)
  if encoder_params is None:
    if not extra:
      return drifting.raw_features
    return release_features.release_feature_fn(None, extra_fns=extra)
  encoder = mae_model(config)
  if config.mae.arch == "release":  # The release's feature-key set.
    return release_features.release_feature_fn(
        lambda x: encoder.apply(encoder_params, x, method=encoder.activations),
        every_k_block=config.mae.every_k_block, extra_fns=extra)
  feature_fn = feature_encoder.encoder_feature_fn(
      lambda x: encoder.apply(encoder_params, x, method=encoder.features))
  if not extra:
    return feature_fn
  return lambda x: dict(feature_fn(x), **extra[0](x))


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
  feature_fn = drifting_feature_fn(config, encoder_params, convnext_variables)
  split = split_leading_axis(mesh) if mesh is not None else (lambda tree: tree)
  accum_steps = drifting.accumulation_steps(config.drifting, mesh.size if mesh is not None else 1)

  def sharded_features(x):
    return split(feature_fn(split(x)))

  def sharded_generator(params, noise, alpha, labels):
    return split(generator_fn(model, params)(*split((noise, alpha, labels))))

  def value_and_grad(params, real, classes, key):
    return drifting.drifting_value_and_grad(
        sharded_generator, params, split(real["positives"]), split(classes), key, config.drifting,
        feature_fn=sharded_features, uncond_real=split(real["uncond"]), accum_steps=accum_steps)
  return value_and_grad


def mae_objective(model, config):
  """(params, x, labels, key) -> (loss, metrics): masked-autoencoder pretraining of the encoder."""
  def loss_fn(params, x, labels, key):
    del labels
    if config.mae.arch == "release":
      return mae_resnet.mae_loss(model, params, x, key, config.mae.mask_ratio, config.mae.patch_size)
    return feature_encoder.mae_loss(model.apply, params, x, key, config.mae.mask_ratio,
                                    config.mae.patch_size)
  return loss_fn


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


def method_objective(model, config, augment_labels=None):
  """config.method's loss as (params, x, labels, key) -> (loss, metrics), for MeanFlow and MAE."""
  if config.method == "mae":
    return mae_objective(model, config)
  return meanflow_objective(model, config, augment_labels)


def method_value_and_grad(model, config, aux, mesh=None, augment_labels=None):
  """config.method's (params, x, labels, key) -> ((loss, metrics), grads), built at trace time."""
  if config.method == "drifting":
    # The frozen encoder's parameters travel in the state: arguments, not compile-time constants.
    return drifting_value_and_grad(model, config, aux["encoder"], mesh, aux.get("convnext"))
  return jax.value_and_grad(method_objective(model, config, augment_labels), has_aux=True)


def make_train_step(config, model, optimizer, objective=None, mesh=None):
  """Returns train_step(state, batch) -> (state, metrics), not yet jitted.

  `objective` replaces config.method's loss ((params, x, labels, key) -> (loss, metrics)).
  `mesh`: the mesh the step is jitted for (default: all devices, config.sharding.fsdp); the
  drifting step splits its classes over it.
  """
  if mesh is None and config.method == "drifting":
    mesh = sharding_lib.make_mesh(config.sharding.fsdp)

  def train_step(state: TrainState, batch):
    k_data, k_loss, k_aux = jax.random.split(step_key(config.seed, state.step), 3)
    x, labels, aux = prepare_batch(batch, k_data, config), batch["label"], state.aux
    augment_labels = None
    if config.augment.enabled:  # Its own stream: the other keys stay those of unaugmented runs.
      x, augment_labels = augment.augment(x, jax.random.fold_in(k_data, AUGMENT_STREAM),
                                          config.augment)
    if config.method == "drifting":
      aux, x, labels = drifting_inputs(aux, x, labels, k_aux, config)
    if objective is not None:
      grad_fn = jax.value_and_grad(objective, has_aux=True)
    else:
      grad_fn = method_value_and_grad(model, config, aux, mesh, augment_labels)
    (loss, metrics), grads = grad_fn(state.params, x, labels, k_loss)
    grad_norm = optax.global_norm(grads)

    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = update_ema(state.ema_params, params, config.ema_decays, state.step + 1,
                            config.ema_every)

    # A non-finite step is not applied, and no later one is: the last good values survive.
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    ok = finite & (state.nonfinite_step < 0)
    keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, old)
    new_state = state.replace(
        step=state.step + ok.astype(jnp.int32),
        params=keep(params, state.params),
        opt_state=keep(opt_state, state.opt_state),
        ema_params=keep(ema_params, state.ema_params),
        aux=keep(aux, state.aux),
        nonfinite_step=jnp.where((state.nonfinite_step < 0) & ~finite, state.step + 1,
                                 state.nonfinite_step))
    metrics = dict(metrics, grad_norm=grad_norm, loss=loss)
    return new_state, metrics

  return train_step


def jit_train_step(train_step, mesh, state_shardings):
  """jit with the state donated and sharded as created, the batch split over all devices."""
  return jax.jit(train_step, donate_argnums=(0,),
                 in_shardings=(state_shardings, sharding_lib.batch_sharding(mesh)),
                 out_shardings=(state_shardings, sharding_lib.replicated(mesh)))


def nonfinite_error(state: TrainState, metrics) -> FloatingPointError:
  """Describes the first non-finite step, naming the metric (checked on the host)."""
  step = int(state.nonfinite_step)
  names = [k for k in (NONFINITE_LOSS, NONFINITE_GRAD) if not jnp.isfinite(metrics[k])]
  what = " and ".join(names) or "loss or grad_norm"
  return FloatingPointError(
      f"non-finite {what} at step {step}: training stopped; the update of that step was not applied "
      "and the last good checkpoint is left intact. Lower optim.learning_rate or set optim.grad_clip.")
