"""The drifting method inside the trainer: a data-parallel step on 8 devices that equals the
one-device step, exact resume (queues included) through checkpoints, and one-step sampling."""
import json
import re

import jax
import numpy as np
import optax

import input_pipeline
from configs import drifting_digits
from mf_jax import sharding as sharding_lib
from mf_jax import train
from mf_jax import train_state as ts
from mf_jax import train_step as step_lib


def tiny_drifting():
  config = drifting_digits.get_config()
  config.model.mlp_widths = (64, 64)
  config.drifting.update(classes_per_step=4, num_pos=8, num_neg=8, queue_len=16,
                         temperatures=(0.05, 0.2))
  config.train.update(global_batch_size=32, num_steps=3, log_every=1, checkpoint_every=100,
                      sample_every=0)
  config.eval.every_steps = 0
  config.sample.update(num_samples=16, batch_size=16)
  return config


def _one_step(config, mesh, with_hlo=False):
  """One drifting step with SGD(lr=1) after filling the queues: (params delta = -grad, loss, aux, hlo)."""
  model, opt = ts.build_model(config), optax.sgd(1.0)
  state, shardings = ts.create_sharded_state(config, model, opt, mesh, jax.random.key(0))
  state = train.prepare_first_step(config, state, mesh, shardings)
  step = step_lib.jit_train_step(step_lib.make_train_step(config, model, opt, mesh=mesh), mesh,
                                 shardings)
  batch = sharding_lib.global_batch(next(input_pipeline.train_iterator(config, 0)), mesh)
  hlo = step.lower(state, batch).compile().as_text() if with_hlo else None
  before = jax.device_get(state.params)
  state, metrics = step(state, batch)  # Donates the old state.
  delta = jax.tree_util.tree_map(lambda a, b: a - b, before, jax.device_get(state.params))
  return delta, float(metrics["loss"]), jax.device_get(state.aux), hlo


def test_drifting_step_is_data_parallel_and_matches_one_device():
  """Also with the gradient accumulated over two passes of one class per device (4 devices)."""
  config = tiny_drifting()
  config.drifting.update(classes_per_step=8, num_unc=4, uncond_queue_len=16)  # Guidance on.
  ref_grad, ref_loss, ref_aux, _ = _one_step(config, sharding_lib.make_mesh(1, jax.devices()[:1]))
  mesh = sharding_lib.make_mesh(2)  # 4 data x 2 FSDP: classes over all 8 devices, params over 2.
  grad, loss, aux, hlo = _one_step(config, mesh, with_hlo=True)
  accumulated = config.copy_and_resolve_references()
  accumulated.drifting.accum_classes_per_device = 1  # 2 classes per device: 2 passes.
  grad2, loss2, aux2, hlo2 = _one_step(accumulated, sharding_lib.make_mesh(2, jax.devices()[:4]),
                                       with_hlo=True)

  # Each device runs the generator's first layer on its 1/8 of the step's (or pass's) samples.
  samples = config.drifting.classes_per_step * config.drifting.num_neg
  first_layer = (r"= f32\[(\d+),\d+\][^\n]* dot\([^\n]*op_name=\"[^\"]*/jvp\(MLP\)/hidden_0/"
                 r"dot_general")
  assert {int(m) for m in re.findall(first_layer, hlo)} == {samples // 8}
  assert {int(m) for m in re.findall(first_layer, hlo2)} == {samples // 2 // 4}  # Half, over 4.
  # The first layer's kernel gradient is reduced across devices (all-reduce, or reduce-scatter
  # onto its FSDP shards).
  kernel = ref_grad["params"]["hidden_0"]["kernel"].shape
  shapes = {f"f32[{a},{b}]" for a, b in (kernel, kernel[::-1], (kernel[0] // 2, kernel[1]),
                                         (kernel[1], kernel[0] // 2))}
  reduced = re.findall(r"= (.*?) (?:all-reduce|reduce-scatter)(?:-start)?\(", hlo)
  assert any(shape in types for types in reduced for shape in shapes), reduced

  # Same step as on one device. Both are float32 evaluations of one function in different
  # reduction orders: distances carry relative rounding ~ eps sqrt(C) (C = 64 pixels), and the
  # kernel exp(-d / (tau mean_d)) turns it into relative weight errors of ~ eps sqrt(C) (d / mean_d)
  # / tau, d / mean_d < 8 here. A sharding error (a class mixed up, a missing reduction) is O(1).
  tol = 8 * np.sqrt(64) * np.finfo(np.float32).eps / min(config.drifting.temperatures)
  flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(t)])
  for g, l, a in ((grad, loss, aux), (grad2, loss2, aux2)):
    assert abs(l - ref_loss) <= tol * abs(ref_loss)
    assert np.linalg.norm(flat(g) - flat(ref_grad)) <= tol * np.linalg.norm(flat(ref_grad))
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(ref_aux)):
      np.testing.assert_array_equal(x, y)  # Queues: exact copies, whatever the sharding.


def test_drifting_resume_and_sample(tmp_path):
  config = tiny_drifting()
  config.drifting.update(num_unc=2, uncond_queue_len=16)  # Both queues in the checkpoint.
  first = train.train_and_evaluate(config, str(tmp_path / "a"))
  restored, *_, ckpt = train.setup_state(config, str(tmp_path / "a"))
  ckpt.close()
  assert restored.aux["queues"].samples.sharding.spec == first.aux["queues"].samples.sharding.spec
  for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(restored.aux)),
                  jax.tree_util.tree_leaves(jax.device_get(first.aux))):
    np.testing.assert_array_equal(a, b)
  config.train.num_steps = 5
  resumed = train.train_and_evaluate(config, str(tmp_path / "a"))
  straight = train.train_and_evaluate(config, str(tmp_path / "b"))
  for a, b in zip(jax.tree_util.tree_leaves(jax.device_get((resumed.params, resumed.aux))),
                  jax.tree_util.tree_leaves(jax.device_get((straight.params, straight.aux)))):
    np.testing.assert_array_equal(a, b)
  batch = np.load(train.sample_to_files(config, str(tmp_path / "a")))
  assert batch["arr_0"].shape == (16, 8, 8, 1) and batch["arr_0"].dtype == np.uint8


def test_mae_pretraining_then_drifting_on_its_features(tmp_path):
  """An MAE pretrained by the trainer (method='mae') becomes drifting's frozen feature encoder: each
  of its feature sets joins the loss, and it stays at the MAE's EMA parameters. One encoder stage
  (multi-stage feature sets: test_drifting.py); rbg keys, whose parameter init compiles several
  times faster than threefry's on CPU."""
  mae = tiny_drifting()
  mae.method = "mae"
  mae.mae.update(widths=(8,), blocks_per_stage=1, groups=4, decoder_width=8)
  mae.train.num_steps = 2
  config = tiny_drifting()
  config.mae = mae.mae
  config.train.num_steps = 2
  config.drifting.feature_encoder_workdir = str(tmp_path / "mae")
  with jax.default_prng_impl("rbg"):
    first = train.train_and_evaluate(mae, str(tmp_path / "mae"))
    state = train.train_and_evaluate(config, str(tmp_path / "drift"))
  assert int(first.step) == 2 and int(state.step) == 2
  rows = [json.loads(l) for l in open(tmp_path / "drift" / "metrics.jsonl") if '"loss"' in l]
  sets = {k[len("loss/"):] for k in rows[-1] if k.startswith("loss/")}
  assert sets == {"raw"} | {f"stage0/{s}" for s in ("loc", "global", "patch2", "patch4")}, sets
  # The encoder stays frozen at the MAE's EMA parameters.
  for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(state.aux["encoder"])),
                  jax.tree_util.tree_leaves(jax.device_get(first.ema_params[0]))):
    np.testing.assert_array_equal(a, b)
