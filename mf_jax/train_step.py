"""The jitted train step: batch preparation, the method's gradient, optimizer update, EMA, non-finite guard.

Randomness comes from fold_in(seed, step), so a resumed run draws exactly the numbers the
uninterrupted run would have drawn at the same step.
"""
import jax
import jax.numpy as jnp
import optax

from mf_jax import augment
from mf_jax import ema as ema_lib
from mf_jax import sharding as sharding_lib
from mf_jax.train_state import TrainState, objective, update_ema

NONFINITE_LOSS, NONFINITE_GRAD = "loss", "grad_norm"


AUGMENT_STREAM = 1  # fold_in(data key, 1): EDM augmentation of the batch.


def step_key(seed: int, step) -> jax.Array:
  return jax.random.fold_in(jax.random.key(seed), step)


def prepare_batch(batch, key, config) -> jax.Array:
  """Device-side data transforms: latent posterior sampling and flips, or pixel flips. -> x [B,H,W,C]."""
  if "x_std" in batch:
    from input_pipeline.latents import draw_latents  # Latent datasets only.
    return draw_latents(batch, key, config.data.latent_scale, config.data.random_flip,
                        config.data.latent_mean, config.data.latent_std)
  x = batch["x"]
  if config.data.random_flip:
    flip = jax.random.bernoulli(key, 0.5, (x.shape[0],))
    x = jnp.where(flip[:, None, None, None], x[:, :, ::-1], x)
  return x


def make_train_step(config, model, optimizer, mesh=None):
  """Returns train_step(state, batch) -> (state, metrics), not yet jitted.

  The loss and gradient are config.method's (Objective.make_step_grads); `mesh` is the mesh the
  step is jitted for (default: all devices, config.sharding.fsdp), for methods that split their
  step over it.
  """
  step_grads = objective(config).make_step_grads(config, model, mesh)

  def train_step(state: TrainState, batch):
    k_data, k_loss, k_aux = jax.random.split(step_key(config.seed, state.step), 3)
    x, labels = prepare_batch(batch, k_data, config), batch["label"]
    augment_labels = None
    if config.augment.enabled:  # Its own stream: the other keys stay those of unaugmented runs.
      x, augment_labels = augment.augment(x, jax.random.fold_in(k_data, AUGMENT_STREAM),
                                          config.augment)
    aux, (loss, metrics), grads = step_grads(state.params, state.aux, x, labels, augment_labels,
                                             k_loss, k_aux)
    grad_norm = optax.global_norm(grads)

    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # The decays of this update, which makes state.step + 1 updates applied.
    ema_params = update_ema(state.ema_params, params, ema_lib.decays_at(config, state.step + 1),
                            state.step + 1, config.ema_every)

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
      "and nothing from it on was saved. Lower optim.learning_rate or set optim.grad_clip.")
