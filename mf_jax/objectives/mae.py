"""Masked-autoencoder pretraining of drifting's feature encoder as a plug-in (method="mae").

The network is config.mae's encoder (mf_jax/models/feature_encoder.py, or the Drifting release's
MAE ResNet, mf_jax/models/mae_resnet.py); a drifting run reads the EMA parameters of such a run
through drifting.feature_encoder_workdir.
"""
import jax.numpy as jnp

from mf_jax import networks
from mf_jax.errors import ConfigError
from mf_jax.models import feature_encoder, mae_resnet
from mf_jax import objectives
from mf_jax.objectives import base


def check_release_mae(config):
  e, size = config.mae, config.data.image_size
  if len(e.widths) != 4 or len(e.layers) != 4:
    raise ConfigError(f"mae.widths={tuple(e.widths)} and mae.layers={tuple(e.layers)} need 4 "
                      "entries each for mae.arch='release', e.g. (256, 512, 1024, 2048) and "
                      "(3, 4, 6, 3).")
  cell = e.patch_size * e.input_patch_size
  if size % cell:
    raise ConfigError(f"mae.patch_size={e.patch_size} x mae.input_patch_size={e.input_patch_size}"
                      f" = {cell} must divide data.image_size={size}.")


class MAE(base.Objective):
  """Reconstruct hidden p x p patches of x; the loss is the MSE on hidden positions."""
  name = "mae"
  grid_steps = ()  # An encoder: nothing to sample.
  reads_sections = ("mae",)

  def condition_names(self, config):
    return ()

  def build_model(self, config):
    return networks.mae_model(config)

  def example_inputs(self, config, batch_size=1):
    x = networks.example_image(config, batch_size)
    return x, jnp.zeros(x.shape[:-1] + (1,), bool)

  def loss_fn(self, config, model):
    """(params, x, labels, key) -> (loss, metrics)."""
    def loss(params, x, labels, key):
      del labels
      if config.mae.arch == "release":
        return mae_resnet.mae_loss(model, params, x, key, config.mae.mask_ratio,
                                   config.mae.patch_size)
      return feature_encoder.mae_loss(model.apply, params, x, key, config.mae.mask_ratio,
                                      config.mae.patch_size)
    return loss

  def make_step_grads(self, config, model, mesh):
    del mesh
    return base.loss_step_grads(self.loss_fn(config, model))

  def validate(self, config):
    if config.mae.arch == "release":
      check_release_mae(config)
      return
    if config.data.image_size % config.mae.patch_size:
      raise ConfigError(f"mae.patch_size={config.mae.patch_size} must divide data.image_size="
                        f"{config.data.image_size}.")
    for width in config.mae.widths:
      if width % config.mae.groups:
        raise ConfigError(f"mae.groups={config.mae.groups} must divide every mae.widths entry "
                          f"{tuple(config.mae.widths)}.")


objectives.register(MAE())
