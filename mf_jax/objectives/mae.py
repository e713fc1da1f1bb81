"""Masked-autoencoder pretraining of drifting's feature encoder as a plug-in (method="mae").

The network is config.mae's encoder (mf_jax/models/feature_encoder.py, or the Drifting release's
MAE ResNet, mf_jax/models/mae_resnet.py); a drifting run reads the EMA parameters of such a run
through drifting.feature_encoder_workdir.
"""
import jax.numpy as jnp

from mf_jax import networks
from mf_jax.models import config as model_config
from mf_jax.models import feature_encoder, mae_resnet
from mf_jax.objectives import base, registry


class MAE(base.Objective):
  """Reconstruct hidden p x p patches of x; the loss is the MSE on hidden positions."""
  name = "mae"
  grid_steps = ()  # An encoder: nothing to sample.
  # The feature encoder: method="mae" pretrains it; drifting reads the same fields to rebuild it.
  config_sections = {"mae": model_config.MAE}
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
    model_config.check_mae(config)


registry.register(MAE())
