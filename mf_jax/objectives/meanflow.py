"""MeanFlow as a plug-in (flow matching is its meanflow.r_neq_t_ratio = 0 case).

The objective itself, a pure function of the network, is mf_jax/meanflow.py; this module says how
the trainer builds its network, computes its step and samples from it.
"""
import jax
import jax.numpy as jnp

from mf_jax import meanflow, sampling
from mf_jax.errors import ConfigError
from mf_jax.objectives import base, registry

DROPOUT_STREAM = 1  # fold_in(loss key, 1): dropout masks, independent of the loss's own split.


def u_fn(model, params, augment_labels=None, dropout_key=None):
  """The network as the objective sees it: u(z, r, t, labels), conditioned on (t, t - r).

  The model's `condition_names` (set by meanflow.time_conditioning) say which scalars it takes and
  in which order: ("t", "t_minus_r") -> (t, t - r). A model without them (the U-Net) takes (t, t - r).

  Training a U-Net may add augmentation labels [B, 6] and a dropout key. With augment_labels the
  (unconditional) network's `labels` argument carries each sample's row index into augment_labels,
  so the labels follow the samples however the objective splits or reorders the batch.
  """
  names = tuple(getattr(model, "condition_names", ("t", "t_minus_r")))
  if augment_labels is None and dropout_key is None:
    return lambda z, r, t, labels: model.apply(
        params, z, meanflow.time_conditions(names, r, t), labels).reshape(z.shape)
  def u(z, r, t, labels):
    kw = dict(train=dropout_key is not None)
    if augment_labels is not None:
      kw["augment_labels"] = augment_labels[labels]
    if dropout_key is not None:
      kw["rngs"] = {"dropout": dropout_key}
    return model.apply(params, z, meanflow.time_conditions(names, r, t), labels,
                       **kw).reshape(z.shape)
  return u


class MeanFlow(base.Objective):
  """u(z, r, t) trained on the MeanFlow identity; sampled in 1 or more steps (or Euler on u(z,t,t))."""
  name = "meanflow"
  grid_steps = (1, 2)
  config_sections = {"meanflow": meanflow.CONFIG}
  reads_sections = ("meanflow",)
  takes_augment_labels = True

  def condition_names(self, config):
    return meanflow.TIME_CONDITIONINGS[config.meanflow.time_conditioning]

  def loss_fn(self, config, model, augment_labels=None):
    """(params, x, labels, key) -> (loss, metrics).

    augment_labels [B, 6] (EDM augmentation of x): the network sees them; `labels` is then replaced
    by row indices (see u_fn). A U-Net with dropout gets its dropout key here (train only).
    """
    uses_dropout = config.model.name == "unet" and config.model.unet.dropout > 0
    def loss(params, x, labels, key):
      dropout_key = jax.random.fold_in(key, DROPOUT_STREAM) if uses_dropout else None
      if augment_labels is not None:
        labels = jnp.arange(x.shape[0], dtype=jnp.int32)
      return meanflow.meanflow_loss(u_fn(model, params, augment_labels, dropout_key), x, labels,
                                    key, config.meanflow)
    return loss

  def make_step_grads(self, config, model, mesh):
    del mesh  # Plain data parallelism: the batch's sharding says it all.
    def step_grads(params, aux, x, labels, augment_labels, k_loss, k_aux):
      del k_aux
      grad_fn = jax.value_and_grad(self.loss_fn(config, model, augment_labels), has_aux=True)
      return aux, *grad_fn(params, x, labels, k_loss)
    return step_grads

  def make_sample_fn(self, config, model):
    steps = (sampling.euler_steps if config.sample.sampler == "euler"
             else sampling.meanflow_steps)
    def sample(params, noise, labels, num_steps, cfg_scale):
      guided = sampling.guided_u_fn(u_fn(model, params), cfg_scale, config.data.num_classes)
      return steps(guided, noise, labels, num_steps)
    return sample

  def validate(self, config):
    meanflow.check_config(config)
    choice = config.meanflow.time_conditioning
    if choice != "t,t-r" and config.model.name == "unet":
      raise ConfigError(f"meanflow.time_conditioning={choice!r}: model.name='unet' (the official "
                        "CIFAR-10 U-Net) takes exactly (t, t - r); set it to 't,t-r', or use an "
                        "mlp, dit or dit_modern model for this ablation.")

  def benchmark_facts(self, config, num_devices):
    return {"guided": meanflow.is_guided(config.meanflow)}


registry.register(MeanFlow())
