"""Every config section and the module that declares it (mf_jax/config_fields.py): the one list
that configs/base.py builds the config from and that the field checks and the workdir signature
are derived from. A new section is declared in its owner and added here, nowhere else."""
import ml_collections

from eval import config as eval_config
from input_pipeline import config as data_config
from mf_jax import (augment, config_fields, drifting_config, meanflow, optim_config,
                    trainer_config)
from mf_jax.models import config as model_config

SCHEMA = {
    **trainer_config.TOP,                  # seed, method
    "data": data_config.CONFIG,
    "model": model_config.MODEL,
    "meanflow": meanflow.CONFIG,
    # EDM augmentation in the train step, labels fed to the network (U-Net only).
    "augment": augment.CONFIG,
    # Drifting Models (method="drifting"): the loss's section plus how the trainer feeds it.
    "drifting": drifting_config.CONFIG,
    # The feature encoder (method="mae" pretrains it; drifting reads the same fields to rebuild it).
    "mae": model_config.MAE,
    "optim": optim_config.OPTIM,
    **optim_config.EMA,                    # ema_decays, ema_every
    "train": trainer_config.TRAIN,
    "sharding": trainer_config.SHARDING,
    "sample": trainer_config.SAMPLE,
    "eval": eval_config.CONFIG,
}

FIELDS = config_fields.flatten(SCHEMA)  # {dotted name: Field}
# Fields that can change the training state's shapes (recorded in a workdir's signature).
SHAPE_FIELDS = tuple(name for name, field in FIELDS.items() if field.shape)


def default_config() -> ml_collections.ConfigDict:
  """Every section's defaults, as declared; configs/base.py adds the links between sections."""
  return config_fields.section(SCHEMA)
