"""The training system: one step, sharding equivalence, exact resume, bad configs, non-finite stops."""
import functools
import json
import os

import flax.traverse_util
import jax
import numpy as np
import pytest

import input_pipeline
from configs import tiny
from mf_jax import sharding as sharding_lib
from mf_jax import train
from mf_jax import train_state as ts
from mf_jax import train_step as step_lib
import numerics


def tiny_config(**train_overrides):
  config = tiny.get_config()
  config.train.update(train_overrides)
  return config


def leaves(tree):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(jax.device_get(tree))]


def run_steps(config, mesh, num_steps):
  """Builds state and step on `mesh` and runs num_steps; returns (state, [losses])."""
  model, opt = ts.build_model(config), ts.make_optimizer(config)
  state, shardings = ts.create_sharded_state(config, model, opt, mesh, jax.random.key(0))
  state = train.prepare_first_step(config, state, mesh, shardings)
  step = step_lib.jit_train_step(step_lib.make_train_step(config, model, opt, mesh=mesh), mesh,
                                 shardings)
  batches = input_pipeline.train_iterator(config, 0)
  losses = []
  for _ in range(num_steps):
    batch = next(batches)
    if config.model.compute_dtype == "float64":  # Exactness tests: float64 data too.
      batch = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in batch.items()}
    state, metrics = step(state, sharding_lib.global_batch(batch, mesh))
    losses.append(float(metrics["loss"]))
  return state, losses


def test_first_step_is_one_adam_step_on_the_output_layer():
  """Step 1 from the adaLN-Zero initialisation, as derived by hand: the zero output projection and
  zero gates leave every gradient zero except the output projection's (final_proj), so only it
  moves; and Adam's first update (bias-corrected m = g, v = g^2) is lr g / (|g| + eps), i.e. lr
  per entry for |g| >> eps = 1e-8, plus one float32 rounding of the new value (eps32 |p|). The
  other parameters stay bit-identical."""
  config = tiny_config()
  lr = config.optim.learning_rate
  assert config.optim.weight_decay == 0 and config.optim.grad_clip == 0 and not config.optim.warmup_steps
  mesh = sharding_lib.make_mesh(1)
  model, opt = ts.build_model(config), ts.make_optimizer(config)
  state0, _ = ts.create_sharded_state(config, model, opt, mesh, jax.random.key(0))
  before = flax.traverse_util.flatten_dict(jax.device_get(state0.params)["params"], sep="/")
  state, losses = run_steps(config, mesh, 1)
  after = flax.traverse_util.flatten_dict(jax.device_get(state.params)["params"], sep="/")
  assert np.isfinite(losses[0]) and int(state.step) == 1
  assert {"final_proj/kernel", "final_proj/bias"} < set(before) == set(after)
  for name in before:
    old, new = np.asarray(before[name]), np.asarray(after[name])
    if not name.startswith("final_proj/"):
      np.testing.assert_array_equal(new, old, err_msg=name)
      continue
    # lr |g| / (|g| + eps) is never above lr, and within lr eps / |g| <= 1e-4 lr below it for
    # |g| >= 1e-4, which holds for most entries (not all: some gradients are tiny); a wrong rate or
    # bias correction is off by a factor (1 - b1 = 0.1, sqrt(1 - b2) = 0.22).
    step = np.abs(new.astype(np.float64) - old)
    rounding = numerics.EPS32 * np.abs(new).max()
    assert np.all(step <= lr * (1 + 4 * numerics.EPS32) + rounding), (name, step.max())
    assert np.mean(step >= lr * (1 - 1e-4) - rounding) >= 0.9, (name, np.sort(step.ravel()))


def float64_sharding_config():
  config = tiny_config(global_batch_size=16)
  config.model.hidden_size = 64  # Big enough that FSDP really splits some arrays.
  config.model.depth = 1  # One block has every kind of sharded parameter; a second adds compile time only.
  config.model.compute_dtype = "float64"
  return config


@functools.lru_cache(maxsize=None)
def one_device_float64_reference():
  """Two float64 steps on one device, ((params, ema_params) on the host, [losses]): one run shared
  by every mesh compared against it (the reference does not depend on the mesh)."""
  assert jax.config.jax_enable_x64, "call under the x64 fixture"
  state, losses = run_steps(float64_sharding_config(),
                            sharding_lib.make_mesh(1, jax.devices()[:1]), 2)
  return jax.device_get((state.params, state.ema_params)), losses


@pytest.mark.parametrize("fsdp", [1, 2])
def test_sharded_step_matches_single_device(fsdp, x64):
  """8 devices (data x FSDP) compute the numbers of 1 device: checked in float64.

  Only the order of the gradient reduction differs, so in float64 the results agree to rounding
  (1e-16) times the step's condition (~1e3, tests/README.md); a missing all-reduce or a wrongly
  sharded batch changes losses and parameters at the 1e-3 level or more. In float32 the same
  comparison would depend on the processor's rounding.
  """
  config = float64_sharding_config()
  ref_weights, ref_losses = one_device_float64_reference()
  mesh = sharding_lib.make_mesh(fsdp)
  state, losses = run_steps(config, mesh, 2)
  if fsdp > 1:
    specs = [x.sharding.spec for x in jax.tree_util.tree_leaves(state.params)]
    assert any("fsdp" in tuple(s) for s in specs)
  assert all(a.dtype == np.float64 for a in leaves(state.params))
  assert all(a.dtype == np.float64 for a in jax.tree_util.tree_leaves(ref_weights))
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-10)
  assert numerics.rel_err(jax.device_get((state.params, state.ema_params)), ref_weights) < 1e-10


def test_exact_resume(tmp_path):
  config = tiny_config(num_steps=3, checkpoint_every=100)
  train.train_and_evaluate(config, str(tmp_path / "a"))  # Saves at its last step.
  config.train.num_steps = 6
  resumed = train.train_and_evaluate(config, str(tmp_path / "a"))
  straight = train.train_and_evaluate(config, str(tmp_path / "b"))
  assert int(resumed.step) == int(straight.step) == 6
  for a, b in zip(leaves((resumed.params, resumed.ema_params, resumed.opt_state)),
                  leaves((straight.params, straight.ema_params, straight.opt_state))):
    np.testing.assert_array_equal(a, b)
  starts = sorted(os.listdir(tmp_path / "a" / "run_info"))
  assert "start_000000003.json" in starts and "config_000000000.json" in starts
  info = json.load(open(tmp_path / "a" / "run_info" / "start_000000003.json"))
  assert info["packages"]["jax"] == jax.__version__ and info["git"]["commit"]


def test_metrics_jsonl_has_every_logged_scalar(tmp_path):
  """Every log_every steps, the step's own metrics: the logged losses are those of the same steps
  run directly (same program: equal up to float32 rounding of a reordered reduction, 64 units)."""
  config = tiny_config(num_steps=4, log_every=2)
  train.train_and_evaluate(config, str(tmp_path))
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  losses = [r for r in rows if "loss" in r]
  assert [r["step"] for r in losses] == [2, 4]
  assert all("mse" in r and r["grad_norm"] > 0 for r in losses)
  _, direct = run_steps(config, sharding_lib.make_mesh(config.sharding.fsdp), 4)
  np.testing.assert_allclose([r["loss"] for r in losses], [direct[1], direct[3]],
                             rtol=64 * numerics.EPS32)


def test_corrupted_newest_checkpoint_falls_back(tmp_path):
  workdir = str(tmp_path)
  config = tiny_config(num_steps=4, checkpoint_every=2, keep_checkpoints=3)
  train.train_and_evaluate(config, workdir)
  # Corrupt every data file of the newest checkpoint, and leave a half-written one beside it.
  newest = tmp_path / "checkpoints" / "4"
  for root, _, files in os.walk(newest / "default"):
    for f in files:
      if f not in ("_CHECKPOINT_METADATA", "commit_success.txt"):
        open(os.path.join(root, f), "wb").close()
  os.makedirs(tmp_path / "checkpoints" / "6.orbax-checkpoint-tmp-123")
  config.train.num_steps = 6
  state = train.train_and_evaluate(config, workdir)
  assert int(state.step) == 6
  assert os.path.exists(tmp_path / "run_info" / "start_000000002.json")  # Resumed from step 2.
  assert os.path.isdir(tmp_path / "checkpoints_unreadable" / "4")  # Set aside, not deleted.


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  config = tiny_config(num_steps=6, checkpoint_every=1, log_every=1)
  config.optim.learning_rate = 1e38  # Step 1 is finite; step 2 overflows.
  with pytest.raises(FloatingPointError, match=r"non-finite (loss|grad_norm).* at step 2"):
    train.train_and_evaluate(config, str(tmp_path))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1"]
  config.optim.learning_rate = 1e-3
  state, *_ = train.setup_state(config, str(tmp_path))
  assert int(state.step) == 1
  assert all(np.all(np.isfinite(x)) for x in leaves(state.params))


# --- Bad configs fail before any compilation ----------------------------------------------------

@pytest.fixture
def no_compile(monkeypatch):
  def forbidden(*a, **k):
    raise AssertionError("state creation reached before the config was validated")
  monkeypatch.setattr(ts, "create_sharded_state", forbidden)


@pytest.mark.parametrize("field,value,match", [
    ("train.global_batch_size", 12, r"train.global_batch_size=12 must be divisible by the number of "
                                    r"devices \(8\)"),
    ("model.variant", "Huge/2", r"model.variant='Huge/2'"),
    ("data.name", "mnist", r"data.name='mnist': allowed values"),
    ("sharding.fsdp", 3, r"sharding.fsdp=3"),
    ("meanflow.guidance_kappa", 1.5, r"guidance_kappa"),
])
def test_config_errors_name_the_field(tmp_path, no_compile, field, value, match):
  config = tiny_config()
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ValueError, match=match):
    train.train_and_evaluate(config, str(tmp_path))


def test_unwritable_workdir(tmp_path, no_compile):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.raises(PermissionError, match=r"--workdir=.*a_file/run is not writable"):
    train.train_and_evaluate(tiny_config(), str(blocker / "run"))


def test_sample_mode_writes_adm_npz_and_grid(tmp_path):
  config = tiny_config(num_steps=2)
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    train.sample_to_files(config, str(tmp_path / "empty"))
  train.train_and_evaluate(config, str(tmp_path))
  config.sample.update(num_samples=20, num_steps=2)
  path = train.sample_to_files(config, str(tmp_path))
  batch = np.load(path)
  assert batch["arr_0"].shape == (20, 8, 8, 1) and batch["arr_0"].dtype == np.uint8
  np.testing.assert_array_equal(batch["arr_1"], np.arange(20) % 10)
  assert os.path.exists(path.replace(".npz", ".png")) and "2nfe_ema" in path
