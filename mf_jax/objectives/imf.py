"""Improved MeanFlow (iMF) as a plug-in: guidance as a condition, a u head and a v head.

The objective and its sampler are pure functions in mf_jax/imf.py; the network is the in-context
DiT of mf_jax/models/dit_incontext.py (model.name="dit_incontext"). Guidance is chosen at
sampling time: omega is the sampler's cfg_scale (sample.cfg_scale, eval.cfg_scale/cfg_scales),
the interval [t_min, t_max] is sample.guidance_interval / eval.guidance_intervals (() = [0, 1]).
"""
import jax.numpy as jnp

from mf_jax import imf, networks
from mf_jax.errors import ConfigError
from mf_jax.models.dit_incontext import InContextDiT
from mf_jax.objectives import base, registry

FULL_INTERVAL = (0.0, 1.0)


def build_incontext_dit(config, v_head: bool = True, network=InContextDiT,
                        model_name: str = "dit_incontext") -> InContextDiT:
  """The in-context DiT `network` (iMF's, or pMF's pixel subclass) of config.model and
  config.data; v_head=False: the inference model, u head only."""
  m, d = config.model, config.data
  if m.name != model_name:
    raise ConfigError(f"model.name={m.name!r}: method={config.method!r} trains the "
                      f"{network.__name__} network; set model.name={model_name!r}.")
  return network(variant=m.variant, image_size=d.image_size, channels=d.channels,
                 num_classes=d.num_classes, v_head=v_head, head_depth=m.head_depth,
                 depth=m.depth, hidden_size=m.hidden_size, num_heads=m.num_heads)


def net_fn(model, params):
  """The network as mf_jax/imf.py sees it: (z, t, h, omega, t_min, t_max, labels) -> (u, v);
  the network itself never sees t."""
  def net(z, t, h, omega, t_min, t_max, labels):
    del t
    return model.apply(params, z, h, omega, t_min, t_max, labels)
  return net


class IMF(base.Objective):
  """iMF: u(z, h, omega, t_min, t_max) trained on the guided MeanFlow target, with a v head."""
  name = "imf"
  section = "imf"  # The config section of the method's fields.
  grid_steps = (1, 2)
  config_sections = {"imf": imf.CONFIG}
  reads_sections = ("imf",)
  samples_with_interval = True

  def condition_names(self, config):
    return ("h", "omega", "t_min", "t_max")

  def build_model(self, config):
    return build_incontext_dit(config)

  def example_inputs(self, config, batch_size=1):
    scalar = jnp.zeros((batch_size,), jnp.float32)
    return (networks.example_image(config, batch_size), scalar, scalar + 1.0, scalar,
            scalar + 1.0, jnp.zeros((batch_size,), jnp.int32))

  def make_step_grads(self, config, model, mesh):
    del mesh
    return base.loss_step_grads(lambda params, x, labels, key: imf.imf_loss(
        net_fn(model, params), x, labels, key, config.imf))

  def make_sample_fn(self, config, model):
    def sample(params, noise, labels, num_steps, cfg_scale, interval=None):
      t_min, t_max = interval or tuple(config.sample.guidance_interval) or FULL_INTERVAL
      return imf.sample(net_fn(model, params), noise, labels, num_steps, cfg_scale, t_min, t_max)
    return sample

  def validate(self, config):
    c, d = config[self.section], config.data
    if c.num_classes != d.num_classes:
      raise ConfigError(f"{self.section}.num_classes={c.num_classes} differs from "
                        f"data.num_classes={d.num_classes}; leave it linked to data.")
    if d.num_classes < 1:
      raise ConfigError(f"data.num_classes=0: method={self.name!r} trains class-conditional "
                        "guidance; give the label count.")
    try:
      self.build_model(config).dims()
    except ValueError as e:
      raise ConfigError(str(e)) from None

  def benchmark_facts(self, config, num_devices):
    return {"guided": True}


registry.register(IMF())
