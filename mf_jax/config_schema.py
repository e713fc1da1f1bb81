"""Every config section and the module that declares it (mf_jax/config_fields.py): the one list
that configs/base.py builds the config from and that the field checks and the workdir signature
are derived from. The shared sections are listed here; each method's own sections (meanflow,
drifting, mae, imf, ...) come from its plug-in (Objective.config_sections), so a new method adds
its section without editing this file."""
import ml_collections

from eval import config as eval_config
from input_pipeline import config as data_config
from mf_jax import augment, config_fields, objectives, optim_config, trainer_config
from mf_jax.models import config as model_config


def method_sections() -> dict:
  """{section name: fields} of every registered method, each section declared once."""
  sections = {}
  for name in objectives.names():
    for section, fields in objectives.get(name).config_sections.items():
      if section in sections and sections[section] is not fields:
        raise ValueError(f"config section {section!r} is declared by two methods.")
      sections[section] = fields
  return sections


SCHEMA = {
    **trainer_config.TOP,                  # seed, method
    "data": data_config.CONFIG,
    "model": model_config.MODEL,
    **method_sections(),
    # EDM augmentation in the train step, labels fed to the network (U-Net only).
    "augment": augment.CONFIG,
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
