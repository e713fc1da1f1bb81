"""Parity with the official MeanFlow JAX code (Gsunshine/meanflow), on golden files it produced.

tests/golden/ holds a tiny official DiT with random weights in the official checkpoint format and
the official outputs (scripts/make_meanflow_golden.py, which records the official commit). The
checkpoint is converted into a workdir and restored the way --mode=eval restores it.

Tolerances: everything runs in float32 on both sides with the same operations in a different
order (fused vs separate attention scaling, batch composition, XLA's CPU-dependent kernels). Each
output is a chain of ~10 layers whose dot products are at most 256 long; with unit roundoff
u = 6e-8 the typical relative error is ~sqrt(256) u per dot product, ~1e-6 over the network, so
the issue's 1e-5 (relative, in norm) leaves a 10x margin, and a real difference (for example the
position-embedding halves swapped) is of order 1.
"""
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from configs import base
from configs.base import meanflow_config
from mf_jax import generate, meanflow, train
from mf_jax.convert import meanflow_official as convert_lib
from mf_jax.objectives.meanflow import u_fn as meanflow_u_fn
from numerics import rel_err

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")
CKPT = os.path.join(GOLDEN, "meanflow_official_ckpt")
RTOL = 1e-5


@pytest.fixture(scope="module")
def golden():
  with np.load(os.path.join(GOLDEN, "meanflow_official.npz")) as f:
    return {k: f[k] for k in f.files}


def tiny_config(golden):
  config = base.get_config()
  config.data.update(image_size=int(golden["tiny_input_size"]), channels=int(golden["tiny_in_channels"]),
                     num_classes=int(golden["tiny_num_classes"]))
  config.model.update(variant=f"S/{int(golden['tiny_patch_size'])}", depth=int(golden["tiny_depth"]),
                      hidden_size=int(golden["tiny_hidden_size"]),
                      num_heads=int(golden["tiny_num_heads"]))
  config.sample.batch_size = 8
  return config


@pytest.fixture(scope="module")
def converted(golden, tmp_path_factory):
  """(config, state, mesh, model): the golden checkpoint converted and restored as --mode=sample
  (and --mode=eval) do; sample mode, because eval mode also asks for reference statistics."""
  config = tiny_config(golden)
  workdir = str(tmp_path_factory.mktemp("official_workdir"))
  convert_lib.convert_to_workdir(CKPT, config, workdir)
  state, mesh, model = train.restore_trained(config, workdir, "sample")
  return config, state, mesh, model


def test_golden_files_come_from_the_pinned_official_commit(golden):
  script = open(os.path.join(os.path.dirname(GOLDEN), os.pardir, "scripts",
                             "make_meanflow_golden.py")).read()
  pinned = re.search(r'OFFICIAL_COMMIT = "([0-9a-f]{40})"', script).group(1)
  assert str(golden["official_commit"]) == pinned


@pytest.mark.parametrize("which", ["params", "ema"])
def test_converted_checkpoint_reproduces_official_outputs(golden, converted, which):
  _, state, _, model = converted
  params = state.params if which == "params" else state.ema_params[0]
  z, t, h, y = (jnp.asarray(golden[f"u_{k}"]) for k in "zthy")
  # Conditions (t, t - r): h is the official t - r.
  out = jax.jit(lambda p: model.apply(p, z, (t, h), y))(params)
  want = golden[f"u_{which}"]
  assert np.linalg.norm(want) > 1.0  # Random weights: a non-trivial field.
  assert rel_err(out, want) < RTOL
  for i in range(len(want)):  # Every row, the null-label and h = 0 rows included.
    assert rel_err(out[i], want[i]) < RTOL


def test_converted_state_keeps_step_and_adam_moments(converted):
  _, state, _, _ = converted
  official = convert_lib.read_official(CKPT)
  assert int(state.step) == int(official["step"]) == 1
  is_adam = lambda n: isinstance(n, optax.ScaleByAdamState)
  adam = [s for s in jax.tree_util.tree_leaves(state.opt_state, is_leaf=is_adam) if is_adam(s)]
  assert len(adam) == 1 and int(adam[0].count) == int(official["opt_state"]["0"]["count"])
  np.testing.assert_array_equal(
      adam[0].nu["params"]["block_1"]["attn"]["qkv"]["kernel"],
      official["opt_state"]["0"]["nu"]["net"]["blocks"]["layers_1"]["attn"]["qkv"]["_flax_linear"]["kernel"])


def test_unmapped_misshaped_and_missing_keys_are_listed(golden):
  official = convert_lib.read_official(CKPT)
  net = official["params"]["net"]
  net["extra_layer"] = {"kernel": np.zeros((2, 2), np.float32)}
  del net["final_layer"]["linear"]
  with pytest.raises(ValueError) as e:
    convert_lib.convert(official, tiny_config(golden))
  msg = str(e.value)
  assert "unmapped: params/net/extra_layer/kernel" in msg
  assert re.search(r"missing: final_proj/kernel \(\d+, \d+\) \(nothing in params/net\)", msg)
  wider = tiny_config(golden)
  wider.model.hidden_size = 16
  with pytest.raises(ValueError, match=r"misshaped: params/net/x_embedder/proj/kernel \(2, 2, 4, 8\)"):
    convert_lib.convert(convert_lib.read_official(CKPT), wider)


def test_released_b4_checkpoint_fits_configs_imagenet_b4(golden):
  """Every parameter of the official MF-B/4 (names and shapes recorded from the official code)
  maps onto configs/imagenet_b4.py; zero-stride arrays stand in for the weights."""
  from configs import imagenet_b4
  net = {}
  for line in str(golden["b4_params"]).splitlines():
    name, shape = line.split(" ")
    value = np.broadcast_to(np.float32(0), tuple(int(d) for d in shape.split(",") if d))
    node = net
    for part in name.split("/")[:-1]:
      node = node.setdefault(part, {})
    node[name.split("/")[-1]] = value
  official = {"step": 7, "params": net, "ema_params": net,
              "opt_state": {"0": {"count": np.int32(7), "mu": net, "nu": net}}}
  state = convert_lib.convert(official, imagenet_b4.get_config())
  official_size = sum(v.size for v in jax.tree_util.tree_leaves(net))
  assert sum(p.size for p in jax.tree_util.tree_leaves(state.params)) == official_size > 1.3e8


def test_orbax_format_official_checkpoint_reads_the_same(tmp_path):
  legacy = convert_lib.read_official(CKPT)
  folder = str(tmp_path / "checkpoint_1")
  ocp.PyTreeCheckpointer().save(folder, legacy)
  for path in (folder, str(tmp_path)):
    restored = convert_lib.read_official(path)
    flat = lambda d: dict(jax.tree_util.tree_flatten_with_path(d)[0])
    a, b = flat(legacy), flat(restored)
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))


def official_objective_config(golden):
  cfg = meanflow_config(num_classes=int(golden["tiny_num_classes"]))
  cfg.update(time_mu=float(golden["method_P_mean"]), time_sigma=float(golden["method_P_std"]),
             r_neq_t_ratio=1.0 - float(golden["method_data_proportion"]),
             guidance_omega=float(golden["method_omega"]), guidance_kappa=float(golden["method_kappa"]),
             guidance_t_min=float(golden["method_t_start"]), guidance_t_max=float(golden["method_t_end"]),
             class_dropout=float(golden["method_class_dropout_prob"]),
             adaptive_p=float(golden["method_norm_p"]), adaptive_c=float(golden["method_norm_eps"]),
             class_dropout_rows="r_eq_t_first")
  return cfg


def official_rows_in_our_layout(batch, cfg):
  """perm with ours[i] = official[perm[i]]: the official batch has its r != t rows last, ours puts
  them where r_neq_t_pattern says; the other rows keep their order."""
  period, n = meanflow.r_neq_t_pattern(batch, cfg.r_neq_t_ratio)
  distinct = np.arange(batch) % period < n
  official_distinct = np.arange(batch) >= batch - distinct.sum()
  perm = np.empty(batch, np.int64)
  perm[distinct] = np.flatnonzero(official_distinct)
  perm[~distinct] = np.flatnonzero(~official_distinct)
  return perm


def test_official_layout_loss_and_target_equal_the_official(golden, converted):
  _, state, _, model = converted
  cfg = official_objective_config(golden)
  batch = len(golden["loss_x"])
  perm = official_rows_in_our_layout(batch, cfg)
  x, labels, r, t, e, dropped = (jnp.asarray(golden[f"loss_{k}"][perm])
                                 for k in ("x", "labels", "r", "t", "noise", "dropped"))
  # Both kinds of rows present, t inside and outside the guidance interval.
  assert np.any(golden["loss_r"] < golden["loss_t"]) and np.any(golden["loss_r"] == golden["loss_t"])
  assert np.any(golden["loss_t"] > cfg.guidance_t_max) and np.any(golden["loss_t"] < cfg.guidance_t_max)

  # The official layout drops the first r = t rows: a key whose Bernoulli count matches the
  # golden batch's count gives exactly the golden drop mask.
  count = int(golden["loss_dropped"].sum())
  keys = jax.random.split(jax.random.key(0), 200)
  counts = jax.vmap(lambda k: jnp.sum(jax.random.bernoulli(k, cfg.class_dropout, (batch,))))(keys)
  key = keys[int(np.flatnonzero(np.asarray(counts) == count)[0])]
  np.testing.assert_array_equal(meanflow.class_dropout_mask(key, batch, cfg), dropped)
  assert not np.any(np.asarray(dropped) & (np.asarray(r) != np.asarray(t)))

  @jax.jit
  def loss_and_target(params):
    u_fn = meanflow_u_fn(model, params)
    loss, _ = meanflow.meanflow_loss_from_draws(u_fn, x, labels, r, t, e, dropped, cfg)
    # The target through the whole-batch reference path (guidance on every row, one jvp).
    z = (1 - t[:, None, None, None]) * x + t[:, None, None, None] * e
    y = jnp.where(dropped, cfg.num_classes, labels)
    v_tilde = meanflow.guided_velocity(u_fn, z, t, e - x, y, dropped, cfg)
    return (loss,) + meanflow.average_velocity_target(u_fn, z, r, t, v_tilde, y)

  loss, u, u_tgt = loss_and_target(state.params)
  assert abs(float(loss) - float(golden["loss"])) < RTOL * abs(float(golden["loss"]))
  assert rel_err(u_tgt, golden["loss_target"][perm]) < RTOL
  assert rel_err(u, golden["loss_u"][perm]) < RTOL


@pytest.mark.parametrize("num_steps", [1, 2])
def test_samples_equal_the_official_samples(golden, converted, num_steps):
  config, state, mesh, model = converted
  noise, labels = jnp.asarray(golden["sample_noise"]), jnp.asarray(golden["sample_labels"])
  sample_fn = generate.make_sampler(config, model, mesh)  # The sampler --mode=eval uses.
  out = sample_fn(state.ema_params[0], noise, labels, num_steps)
  want = golden[f"sample_{num_steps}nfe"]
  assert rel_err(out, want) < RTOL


# ---------------------------------------------------------------------------------------------
# The switches for the official behaviour, checked against the official expressions.

@pytest.mark.parametrize("p", [0.1, 0.9])
def test_r_eq_t_first_layout_drops_the_first_r_eq_t_rows(p):
  cfg = meanflow_config(num_classes=10)
  cfg.update(class_dropout=p, class_dropout_rows="r_eq_t_first", r_neq_t_ratio=0.25)
  batch = 16
  keys = jax.random.split(jax.random.key(1), 64)
  masks = np.asarray(jax.vmap(lambda k: meanflow.class_dropout_mask(k, batch, cfg))(keys))
  counts = np.asarray(jax.vmap(
      lambda k: jnp.sum(jax.random.bernoulli(k, p, (batch,))))(keys))
  period, n = meanflow.r_neq_t_pattern(batch, cfg.r_neq_t_ratio)
  order = np.concatenate([np.flatnonzero(np.arange(batch) % period >= n),   # r = t rows first,
                          np.flatnonzero(np.arange(batch) % period < n)])   # then r != t rows.
  for mask, count in zip(masks, counts):
    # The official mask arange(B) < num_drop, read in the official row order.
    np.testing.assert_array_equal(mask[order], np.arange(batch) < count)
  num_r_eq_t = batch - batch // period * n
  if p < 0.5:  # Several rows dropped, all of them r = t rows.
    assert 1 < counts.max() <= num_r_eq_t
  else:  # Counts beyond the r = t rows spill into the r != t rows in order, as officially.
    assert counts.max() > num_r_eq_t
  independent = cfg.copy_and_resolve_references()
  independent.class_dropout_rows = "independent"
  np.testing.assert_array_equal(meanflow.class_dropout_mask(keys[0], batch, independent),
                                jax.random.bernoulli(keys[0], p, (batch,)))


def test_half_up_rounding_is_the_official_uint8_conversion():
  x = np.concatenate([np.linspace(-1.2, 1.2, 2001), (np.arange(256) + 0.5) / 127.5 - 1.0,
                      np.arange(-1, 257) / 127.5 - 1.0]).astype(np.float32)
  official = np.clip(127.5 * x + 128.0, 0, 255).astype(np.uint8)  # The official sampler's line.
  np.testing.assert_array_equal(np.asarray(generate.quantize_uint8(jnp.asarray(x), "half_up")),
                                official)
  from configs import tiny
  config = tiny.get_config()  # Pixel data: to_uint8 (sample files, pixel statistics) follows it too.
  config.eval.uint8_rounding = "half_up"
  np.testing.assert_array_equal(generate.to_uint8(x.reshape(-1, 1, 1, 1), config).ravel(), official)
  half_even = np.asarray(generate.quantize_uint8(jnp.asarray(x)))
  assert np.any(half_even != official) and np.abs(half_even.astype(int) - official).max() == 1
  with pytest.raises(ValueError, match="eval.uint8_rounding='nearest'"):
    generate.quantize_uint8(jnp.asarray(x), "nearest")


def test_uniform_labels_keep_the_noise_and_draw_every_class():
  key = jax.random.key(3)
  noise_c, cycle = generate.sample_inputs(key, 0, 2000, (2,), 10)
  noise_u, uniform = generate.sample_inputs(key, 0, 2000, (2,), 10, "uniform")
  np.testing.assert_array_equal(noise_c, noise_u)
  np.testing.assert_array_equal(np.bincount(np.asarray(cycle)), np.full(10, 200))
  hist = np.bincount(np.asarray(uniform), minlength=10)
  assert uniform.dtype == jnp.int32 and len(hist) == 10 and not np.all(hist == 200)
  assert np.all(np.abs(hist - 200) < 5 * np.sqrt(200 * 0.9))  # Binomial(2000, 0.1), 5 sigma.


def test_latent_flips_off_always_takes_the_image_itself():
  from input_pipeline import latents
  b = 64
  mean = np.arange(b, dtype=np.float32).reshape(b, 1, 1, 1) * np.ones((1, 2, 2, 1), np.float32)
  std = np.full_like(mean, 0.5)
  batch = {"x": mean, "x_std": std, "x_flip": -mean - 1, "x_flip_std": std}
  key = jax.random.key(4)
  no_flip = latents.draw_latents(batch, key, 2.0, flip=False)
  noise = jax.random.normal(jax.random.split(key)[1], mean.shape)
  np.testing.assert_allclose(no_flip, (mean + std * noise) * 2.0, rtol=1e-6)
  flipped = latents.draw_latents(batch, key, 2.0)  # Default: half of them are flips.
  assert 0 < np.sum(np.asarray(flipped)[:, 0, 0, 0] < -1) < b


def test_imagenet_meanflow_configs_default_to_the_official_behaviour():
  from configs import imagenet_b4
  config = imagenet_b4.get_config()
  assert config.meanflow.class_dropout_rows == "r_eq_t_first"
  assert (config.eval.label_sampling, config.eval.uint8_rounding) == ("uniform", "half_up")
  assert not config.data.random_flip
  assert config.model.variant == "B/4" and config.ema_decays == (0.9999,)
  bad = meanflow_config()
  bad.class_dropout_rows = "first"
  with pytest.raises(ValueError, match="meanflow.class_dropout_rows='first'"):
    meanflow.validate_config(bad)
