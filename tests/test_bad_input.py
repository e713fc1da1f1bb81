"""Bad config fields fail before anything is written or compiled, with the field named."""
import os
import subprocess
import sys

import pytest

from configs import base, tiny
from mf_jax import config_checks, config_schema, train, workdir_signature
from mf_jax import train_state as ts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MISSING = "/nonexistent/mf_jax_test_path"


@pytest.fixture
def no_compile(monkeypatch):
  def forbidden(*a, **k):
    raise AssertionError("state creation reached before the config was validated")
  monkeypatch.setattr(ts, "create_sharded_state", forbidden)


def _set(config, dotted, value):
  *sections, name = dotted.split(".")
  for s in sections:
    config = config[s]
  config[name] = value


EMPTY_DIR = "<an existing empty folder>"

# (overrides, regex the message must contain: the field's dotted name and its value or rule)
BAD_INPUTS = [
    ({"train.global_batch_size": 0}, r"train\.global_batch_size=0: must be an integer >= 1"),
    ({"train.global_batch_size": 12}, r"train\.global_batch_size=12 must be divisible by the "
                                      r"number of devices \(8\)"),
    ({"train.num_steps": -5}, r"train\.num_steps=-5: must be an integer >= 1"),
    ({"train.checkpoint_every": 0}, r"train\.checkpoint_every=0"),
    ({"train.log_every": 0}, r"train\.log_every=0"),
    ({"train.keep_checkpoints": 0}, r"train\.keep_checkpoints=0"),
    ({"train.sample_every": -1}, r"train\.sample_every=-1"),
    ({"sharding.fsdp": 0}, r"sharding\.fsdp=0"),
    ({"sharding.fsdp": 3}, r"sharding\.fsdp=3 must divide the device count 8: one of \[1, 2, 4, 8\]"),
    ({"sample.ema_index": 3}, r"sample\.ema_index=3: ema_decays=\(0\.995,\) has 1 entries"),
    ({"sample.num_steps": 0}, r"sample\.num_steps=0"),
    ({"sample.batch_size": 12}, r"sample\.batch_size=12 must be divisible"),
    ({"data.name": "mnist"}, r"data\.name='mnist': allowed values"),
    ({"data.name": "imagenet_latents", "data.path": ""}, r"data\.path is empty"),
    ({"data.name": "imagenet_latents", "data.path": MISSING},
     r"data\.path='/nonexistent/mf_jax_test_path': folder '/nonexistent' does not exist"),
    ({"data.name": "imagenet_latents", "data.path": EMPTY_DIR}, r"data\.path=.*: no manifest"),
    ({"data.name": "cifar10", "data.path": MISSING}, r"data\.path=.* is not a folder"),
    ({"data.vae_path": MISSING}, r"data\.vae_path=.* does not exist"),
    ({"data.image_size": 0}, r"data\.image_size=0"),
    ({"data.num_classes": -1}, r"data\.num_classes=-1"),
    ({"method": "gan"}, r"method='gan': allowed values are \['drifting', 'imf', 'mae', 'meanflow', 'pmf'\]"),
    ({"model.variant": "Huge/2"}, r"model\.variant='Huge/2'"),
    ({"model.hidden_size": 30}, r"model\.hidden_size=30 must be divisible by model\.num_heads=2"),
    ({"method": "drifting", "drifting.classes_per_step": 4, "model.name": "dit_modern",
      "model.variant": "B/3"}, r"model\.variant='B/3': patch 3 does not divide data\.image_size="),
    ({"model.name": "dit_modern", "model.noise_coords": 0}, r"model\.noise_coords=0: must be"),
    ({"model.compute_dtype": "float16"}, r"model\.compute_dtype='float16': allowed values"),
    ({"model.attention_impl": "flash"}, r"model\.attention_impl='flash'"),
    ({"model.name": "mlp", "model.mlp_widths": ()}, r"model\.mlp_widths=\(\): must be a non-empty"),
    ({"optim.learning_rate": -1e-4}, r"optim\.learning_rate=-0\.0001: must be a number > 0"),
    ({"optim.learning_rate": float("nan")}, r"optim\.learning_rate=nan: must be a number > 0"),
    ({"optim.b2": 1.0}, r"optim\.b2=1\.0: must be a number in \[0\.0, 1\.0\)"),
    ({"optim.schedule": "linear"}, r"optim\.schedule='linear'"),
    ({"optim.warmup_steps": -1}, r"optim\.warmup_steps=-1"),
    ({"ema_decays": (1.0,)}, r"ema_decays=\(1\.0,\): must be a tuple of numbers, each in \[0\.0, 1\.0\)"),
    ({"ema_half_lives_kimg": (500,)}, r"ema_half_lives_kimg=\(500,\) and ema_decays=\(0\.995,\) "
                                      r"both define EMA copies\. Fix: set --config\.ema_decays=\(\)"),
    ({"ema_half_lives_kimg": (0.0,), "ema_decays": ()}, r"ema_half_lives_kimg=\(0\.0,\): must be "
                                                        r"a tuple of numbers, each > 0"),
    ({"ema_rampup_ratio": 0.0}, r"ema_rampup_ratio=0\.0: must be a number > 0"),
    ({"sample.ema_name": "0.999"}, r"sample\.ema_name='0\.999': this run keeps no EMA copy of that "
                                   r"name \(ema_decays=\(0\.995,\) names its copies \['0\.995'\]\)"),
    ({"sample.ema_name": "1000kimg", "ema_decays": (), "ema_half_lives_kimg": (500, 2000)},
     r"sample\.ema_name='1000kimg'.*names its copies \['500kimg', '2000kimg'\]\)\. Fix: set "
     r"--config\.sample\.ema_name to one of"),
    ({"optim.name": "sgd"}, r"optim\.name='sgd': allowed values are \['adamw', 'adam', 'muon'\]"),
    ({"optim.muon_exclude": ("_tokens$",)}, r"optim\.muon_exclude=\('_tokens\$',\) applies to "
                                            r"optim\.name='muon' only"),
    ({"optim.name": "muon", "optim.muon_exclude": ("(",)}, r"optim\.muon_exclude: '\(' is not a "
                                                           r"regular expression"),
    ({"optim.muon_beta": 1.0}, r"optim\.muon_beta=1\.0: must be a number in \[0\.0, 1\.0\)"),
    ({"meanflow.r_neq_t_ratio": 1.5}, r"meanflow\.r_neq_t_ratio=1\.5"),
    ({"meanflow.time_sigma": 0.0}, r"meanflow\.time_sigma=0\.0"),
    ({"meanflow.adaptive_c": 0.0}, r"meanflow\.adaptive_c=0\.0"),
    ({"meanflow.guidance_kappa": 1.5}, r"meanflow\.guidance_kappa=1\.5"),
    ({"meanflow.class_dropout": 1.0}, r"meanflow\.class_dropout=1\.0"),
    ({"meanflow.guidance_t_min": 0.8, "meanflow.guidance_t_max": 0.5}, r"meanflow\.guidance_t_min=0\.8"),
    ({"eval.every_steps": -1}, r"eval\.every_steps=-1"),
    ({"eval.every_steps": 2, "eval.features": "lpips"}, r"eval\.features='lpips'"),
    ({"method": "drifting", "drifting.classes_per_step": 4, "drifting.queue_len": 8, "drifting.num_pos": 16},
     r"drifting\.num_pos=16 must lie in \[1, drifting\.queue_len=8\]"),
    ({"method": "drifting", "drifting.classes_per_step": 4, "drifting.bank_dtype": "uint8"},
     r"drifting\.bank_dtype='uint8' stores 8-bit pixels, which data\.name='digits' does not give"),
    ({"method": "drifting", "drifting.classes_per_step": 4, "drifting.bank_dtype": "int8"},
     r"drifting\.bank_dtype='int8': allowed values"),
    ({"method": "drifting", "drifting.classes_per_step": 4,
      "drifting.feature_encoder_workdir": MISSING},
     r"drifting\.feature_encoder_workdir=.* holds no checkpoints"),
]


def test_at_least_25_bad_inputs():
  assert len(BAD_INPUTS) >= 25


@pytest.mark.parametrize("overrides,match", BAD_INPUTS,
                         ids=["+".join(f"{k}={v}" for k, v in o.items()) for o, _ in BAD_INPUTS])
def test_bad_field_is_named_and_nothing_is_written(tmp_path, no_compile, overrides, match):
  config = tiny.get_config()
  for name, value in overrides.items():
    if value == EMPTY_DIR:
      value = str(tmp_path / "empty")
      os.makedirs(value)
    _set(config, name, value)
  workdir = tmp_path / "run"
  with pytest.raises((ValueError, FileNotFoundError), match=match):
    train.train_and_evaluate(config, str(workdir))
  assert not os.path.exists(workdir)


def test_sample_mode_checks_fields_before_reading_the_workdir(tmp_path, no_compile):
  config = tiny.get_config()
  config.sample.ema_index = 1
  with pytest.raises(ValueError, match=r"sample\.ema_index=1"):
    train.sample_to_files(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")


def test_every_base_field_is_declared_and_every_declaration_reaches_base():
  """base.py builds the config from the declarations; a field added there by hand has no rule."""
  names = config_checks.field_names(base.get_config())
  undeclared = sorted(set(names) - set(config_checks.FIELDS))
  assert not undeclared, f"declare {undeclared} with a Field in its section's module (docs/config.md)"
  assert sorted(names) == sorted(config_checks.FIELDS)


def test_workdir_shape_fields_are_the_declared_shape_fields():
  shape = [n for n, f in config_schema.FIELDS.items() if f.shape]
  assert workdir_signature.SHAPE_FIELDS == tuple(shape)
  # The state's shapes follow these; a run restores by the names recorded in its workdir.
  assert {"method", "model.depth", "ema_decays", "drifting.queue_len", "mae.widths",
          "meanflow.time_conditioning"} <= set(shape)
  assert not {"seed", "optim.learning_rate", "sample.cfg_scale"} & set(shape)


def test_every_default_passes_its_own_rule():
  for name, field in config_schema.FIELDS.items():
    assert field.rule(field.default) is None, name


def test_main_validates_once_and_direct_callers_still_validate(tmp_path, no_compile, monkeypatch):
  calls = []
  real = config_checks.validate_static
  monkeypatch.setattr(config_checks, "validate_static", lambda c: calls.append(1) or real(c))
  config, workdir = tiny.get_config(), str(tmp_path / "run")
  config_checks.validate(config, workdir, "train", hand_over=True)  # main.py
  with pytest.raises(AssertionError, match="state creation reached"):
    train.train_and_evaluate(config, workdir)  # Its set-up skips what main.py just checked.
  assert len(calls) == 1
  with pytest.raises(AssertionError, match="state creation reached"):
    train.train_and_evaluate(config, workdir)  # Not through main.py: validated.
  assert len(calls) == 2
  config_checks.validate(config, workdir, "train", hand_over=True)
  config.train.num_steps += 1  # Changed after main.py's check: validated again.
  with pytest.raises(AssertionError, match="state creation reached"):
    train.train_and_evaluate(config, workdir)
  assert len(calls) == 4


def test_every_rule_accepts_the_defaults_of_every_shipped_config():
  for name in sorted(os.listdir(os.path.join(ROOT, "configs"))):
    if name.endswith(".py") and name not in ("__init__.py", "base.py", "imagenet_base.py"):
      module = __import__(f"configs.{name[:-3]}", fromlist=["get_config"])
      config_checks.check_fields(module.get_config())


def test_unknown_field_names_section_and_closest_names():
  config = tiny.get_config()
  msg = config_checks.unknown_field_message(config, "train.num_step")
  assert "train has no field 'num_step'; did you mean num_steps?" in msg
  assert "valid names in train: checkpoint_every, global_batch_size" in msg
  msg = config_checks.unknown_field_message(config, "optimizer.learning_rate")
  assert "the top level has no field 'optimizer'; did you mean optim?" in msg
  assert config_checks.unknown_field_message(config, "train.num_steps") is None


def test_main_unknown_field_is_one_line_and_writes_nothing(tmp_path):
  workdir = tmp_path / "run"
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"),
                         f"--config={os.path.join(ROOT, 'configs', 'tiny.py')}",
                         f"--workdir={workdir}", "--config.train.checkpoint_evry=5"],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2
  assert "train has no field 'checkpoint_evry'; did you mean checkpoint_every" in proc.stderr
  assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) <= 2
  assert not os.path.exists(workdir)
