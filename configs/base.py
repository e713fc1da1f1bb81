"""The one config schema every run shares; other configs start here and override fields.

Each section is declared, with every field's default, rule and fix, by the module that owns it
(mf_jax/config_schema.py lists them; docs/config.md): data (input_pipeline/config.py), model and
mae (mf_jax/models/config.py), meanflow (mf_jax/meanflow.py), augment (mf_jax/augment.py),
drifting (mf_jax/drifting.py), optim, ema_decays and ema_every (mf_jax/optim_config.py), seed,
method, train, sharding and sample (mf_jax/trainer_config.py), eval (eval/config.py).
Defaults follow the paper's ImageNet recipe where one exists. Here: the links between sections.
"""
import ml_collections

from mf_jax import config_schema, meanflow

meanflow_config = meanflow.default_config  # The `meanflow` section alone (tests build it so).


def get_config() -> ml_collections.ConfigDict:
  config = config_schema.default_config()
  # An objective's null label is the data's class count: one field, read in two sections.
  for name in config_schema.method_sections():
    if "num_classes" in config[name]:
      config[name].num_classes = config.data.get_ref("num_classes")
  return config
