"""The drifting field and loss against hand-written references and the field's defining properties."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import numerics
from mf_jax import drifting, drifting_field
from mf_jax import drifting_features
from mf_jax.models import feature_encoder
from mf_jax.models.mlp import MLP

# Parameter init draws many random arrays; threefry compiles slowly on CPU, rbg does not. Only used
# where the random stream itself does not matter.
fast_key = lambda seed: jax.random.key(seed, impl="unsafe_rbg")

# Jitted once per static configuration: eager dispatch of many small ops is slow on a busy CPU.
drift_field = jax.jit(drifting_field.drift_field, static_argnums=3, static_argnames="mask_self")
feature_set_field = jax.jit(drifting_field.feature_set_field, static_argnums=(4, 5, 6, 7))


def reference_field(x, y_pos, y_neg, tau, mask_self, neg_weights, floor):
  """Pair-by-pair loops (float64) over the released kernel: the batch form and the mean-shift form."""
  n, p, m = len(x), len(y_pos), len(y_neg)
  ys = [np.asarray(y, np.float64) for y in list(y_pos) + list(y_neg)]
  logit = np.full((n, p + m), -np.inf)
  for i in range(n):
    for j in range(p + m):
      if not (mask_self and j == p + i):
        logit[i, j] = -math.sqrt(max(sum((a - b) ** 2 for a, b in zip(x[i], ys[j])), 1e-8)) / tau
  a = np.zeros((n, p + m))
  for i in range(n):
    for j in range(p + m):
      row = math.exp(logit[i, j]) / sum(math.exp(l) for l in logit[i])  # Over all columns.
      col = math.exp(logit[i, j]) / sum(math.exp(logit[k, j]) for k in range(n))  # Over x.
      w = 1.0 if j < p else neg_weights[j - p]  # Weights after both (unweighted) softmaxes.
      a[i, j] = w * math.sqrt(max(row * col, floor ** 2))
  batch_form = np.zeros((n, len(x[0])))
  mean_shift = np.zeros_like(batch_form)
  for i in range(n):
    s_pos, s_neg = sum(a[i, :p]), sum(a[i, p:])
    for j in range(p + m):
      sign, other = (1.0, s_neg) if j < p else (-1.0, s_pos)
      batch_form[i] += sign * a[i, j] * other * (ys[j] - x[i])
    # Mean-shift form: V = S+ S- (mean shift towards y+ - mean shift towards y-), A as weights.
    v_pos = sum(a[i, j] * (ys[j] - x[i]) for j in range(p)) / s_pos
    v_neg = sum(a[i, j] * (ys[j] - x[i]) for j in range(p, p + m)) / s_neg
    mean_shift[i] = s_pos * s_neg * (v_pos - v_neg)
  return batch_form, mean_shift


def test_batch_form_matches_pair_loops_and_mean_shift_form():
  rng = np.random.default_rng(0)
  n, p, extra, c = 5, 4, 3, 3
  x = rng.normal(size=(n, c))
  y_pos = rng.normal(size=(p, c)) + 0.5
  y_neg = np.concatenate([x, rng.normal(size=(extra, c))])  # Negatives start with x (self-masked).
  weights = np.concatenate([np.ones(n), [0.0, 0.7, 2.5]])  # A zero weight: no affinity at all.
  released = drifting.RELEASED_AFFINITY_FLOOR
  for tau, floor in ((0.05, released), (0.7, released), (0.7, 0.0)):  # At 0.05 most pairs sit at it.
    batch_form, mean_shift = reference_field(x, y_pos, y_neg, tau, True, weights, floor)
    np.testing.assert_allclose(batch_form, mean_shift, rtol=1e-9, atol=1e-12)
    v = drift_field(jnp.asarray(x, jnp.float32), jnp.asarray(y_pos, jnp.float32),
                    jnp.asarray(y_neg, jnp.float32), tau, mask_self=True,
                    neg_weights=jnp.asarray(weights, jnp.float32), affinity_floor=floor)
    # float32: logits up to ~1e2 carry ~1e-5 relative error into the exponentials.
    np.testing.assert_allclose(np.asarray(v), batch_form, rtol=2e-4,
                               atol=2e-5 * np.abs(batch_form).max())


def test_antisymmetric_and_zero_when_positives_equal_negatives():
  k = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(k[0], (16, 4))
  a = jax.random.normal(k[1], (12, 4)) + 1.0
  b = jax.random.normal(k[2], (20, 4)) * 0.5
  for tau in (0.1, 1.0):
    v_ab = drift_field(x, a, b, tau)
    np.testing.assert_allclose(drift_field(x, b, a, tau), -v_ab, rtol=1e-5, atol=1e-7)
    assert float(jnp.abs(v_ab).max()) > 1e-3  # Not trivially zero.
    same = drift_field(x, a, a[::-1], tau)  # Same set, other order.
    np.testing.assert_allclose(same, 0.0, atol=1e-6)


def test_field_points_from_far_samples_to_the_data():
  k = jax.random.split(jax.random.key(2), 2)
  data = 0.3 * jax.random.normal(k[0], (64, 2))
  generated = jnp.array([6.0, 4.0]) + 0.5 * jax.random.normal(k[1], (32, 2))
  for v in (drift_field(generated, data, generated, 0.5, mask_self=True),
            feature_set_field(generated[None, :, None], data[None, :, None],
                              jnp.zeros((1, 0, 1, 2)), jnp.zeros((1,)),
                              (0.02, 0.05, 0.2), True, True, 0)[0][0, :, 0]):
    to_data = jnp.mean(data, 0) - generated
    cos = jnp.sum(v * to_data, 1) / (jnp.linalg.norm(v, axis=1) * jnp.linalg.norm(to_data, axis=1))
    assert float(cos.min()) > 0.9


def _random_sets(seed, n_c=2, n=10, p=7, u=4, num_loc=3, ch=8):
  k = jax.random.split(jax.random.key(seed), 3)
  offset = 2.0 * jnp.arange(n_c)[:, None, None, None]  # Classes at different places and scales.
  spread = 1.0 + jnp.arange(n_c)[:, None, None, None]
  return (spread * jax.random.normal(k[0], (n_c, n, num_loc, ch)) + offset,
          spread * jax.random.normal(k[1], (n_c, p, num_loc, ch)) + offset + 0.3,
          jax.random.normal(k[2], (n_c, u, num_loc, ch)))


def test_feature_scale_and_unit_rms_are_statistics_of_the_whole_step():
  phi_x, phi_pos, phi_unc = _random_sets(3)
  w = jnp.array([1.5, 0.5])
  v, scale, rms = feature_set_field(phi_x, phi_pos, phi_unc, w, (0.05,), True, True, 0)
  # Mean distance over every class, location and pair (self pairs at the 1e-4 floor), guidance
  # negatives weighted by their class's w, computed directly.
  x, yp, yu = map(np.asarray, (phi_x, phi_pos, phi_unc))
  total, count = 0.0, 0.0
  for c in range(2):
    for l in range(3):
      for i in range(10):
        for ys, wt in ((yp[c], 1.0), (x[c], 1.0), (yu[c], float(w[c]))):
          for y in ys:
            total += wt * max(np.linalg.norm(x[c, i, l] - y[l]), 1e-4)
            count += wt
  np.testing.assert_allclose(float(scale), total / count / math.sqrt(8), rtol=1e-5)
  np.testing.assert_allclose(float(jnp.sqrt(jnp.mean(v ** 2))), 1.0, rtol=1e-5)
  # Per class the RMS is not 1 and one class alone gets another scale and field: the statistics
  # are global, not per class.
  assert abs(float(jnp.sqrt(jnp.mean(v[0] ** 2))) - 1.0) > 0.05
  v0, scale0, _ = feature_set_field(phi_x[:1], phi_pos[:1], phi_unc[:1], w[:1], (0.05,), True,
                                    True, 0)
  assert abs(float(scale0) / float(scale) - 1.0) > 0.1
  assert float(jnp.abs(v0[0] - v[0]).max()) > 0.1
  # Scaling every feature by 7 scales s by 7 and leaves the field (in units of phi / s) unchanged.
  v7, scale7, rms7 = feature_set_field(7 * phi_x, 7 * phi_pos, 7 * phi_unc, w, (0.05,), True,
                                       True, 0)
  np.testing.assert_allclose(float(scale7), 7 * float(scale), rtol=1e-5)
  np.testing.assert_allclose(v7, v, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(rms7, rms, rtol=1e-4)


def test_chunked_over_classes_equals_all_at_once():
  phi_x, phi_pos, phi_unc = _random_sets(4, n_c=4, n=6, p=5, u=3, num_loc=2, ch=4)
  w = jnp.array([0.0, 1.0, 2.0, 3.5])
  want = feature_set_field(phi_x, phi_pos, phi_unc, w, (0.02, 0.2), True, True, 0)
  for chunk in (1, 2):
    got = feature_set_field(phi_x, phi_pos, phi_unc, w, (0.02, 0.2), True, True, chunk)
    for a, b in zip(got, want):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="class_chunk"):
    drifting_field.feature_set_field(phi_x, phi_pos, phi_unc, w, (0.2,), class_chunk=3)


def test_guidance_weight_enters_after_the_softmax_normalisers():
  phi_x, phi_pos, phi_unc = _random_sets(5, n_c=1, n=6, p=5, u=4, num_loc=1, ch=3)
  alpha_one = drifting.guidance_weight(jnp.ones((1,)), num_neg=6, num_unc=4)
  fields = lambda unc: feature_set_field(phi_x, phi_pos, unc, alpha_one, (0.05, 0.2), True, True,
                                         0)[0]
  v_none = fields(phi_unc[:, :0])
  # At w = 0 guidance negatives get no affinity and leave the scale alone; far away they do not
  # touch the (unweighted) softmax normalisers either, close by they do.
  np.testing.assert_allclose(fields(phi_unc + 30.0), v_none, rtol=1e-5, atol=1e-6)
  assert float(jnp.abs(fields(phi_x[:, :4]) - v_none).max()) > 1e-3
  # alpha = 3 with N_neg = 6, N_unc = 4: w = 2 * 5 / 4.
  np.testing.assert_allclose(drifting.guidance_weight(jnp.array(3.0), 6, 4), 2.5)


def test_alpha_follows_the_power_law_and_no_guidance_fraction():
  config = drifting.default_config()
  config.update(alpha_min=1.0, alpha_max=4.0, alpha_power=3.0)
  alpha = np.asarray(drifting.sample_alpha(jax.random.key(0), 20000, config))
  assert alpha.min() >= 1.0 and alpha.max() <= 4.0
  # CDF of alpha^-3 on [1, 4]: (1 - a^-2) / (1 - 4^-2).
  for a in (1.2, 1.5, 2.0, 3.0):
    np.testing.assert_allclose(np.mean(alpha <= a), (1 - a ** -2) / (1 - 4.0 ** -2), atol=0.015)
  config.alpha_power, config.no_guidance_frac = 0.0, 0.25
  alpha = np.asarray(drifting.sample_alpha(jax.random.key(1), 20000, config))
  np.testing.assert_allclose(np.mean(alpha == 1.0), 0.25, atol=0.015)
  np.testing.assert_allclose(np.mean(alpha[alpha > 1.0] <= 2.5), 0.5, atol=0.015)  # Uniform.


def test_loss_value_is_mean_squared_field_and_gradient_is_minus_field():
  k = jax.random.split(jax.random.key(5), 2)
  phi_x, phi_pos = jax.random.normal(k[0], (2, 8, 2, 5)), jax.random.normal(k[1], (2, 9, 2, 5))
  v, scale, _ = feature_set_field(phi_x, phi_pos, jnp.zeros((2, 0, 2, 5)), jnp.zeros((2,)),
                                  (0.02, 0.05, 0.2), True, True, 0)
  loss, grad = jax.jit(jax.value_and_grad(drifting_field.drifting_mse))(phi_x, v, scale)
  np.testing.assert_allclose(float(loss), float(jnp.mean(v ** 2)), rtol=1e-5)
  np.testing.assert_allclose(grad, -2 * v / (v.size * scale), rtol=1e-4, atol=1e-7)


def test_other_class_samples_come_from_other_classes():
  real = jnp.broadcast_to(jnp.arange(5.0)[:, None, None], (5, 3, 1))  # Value = class row.
  out = drifting.other_class_samples(jax.random.key(0), real, 50)
  rows = np.asarray(out[..., 0])
  assert np.all(rows != np.arange(5)[:, None])
  assert set(np.unique(rows)) == set(range(5))


def test_validate_config_names_the_field():
  config = drifting.default_config()
  drifting.validate_config(config)
  config.num_neg = 1
  with pytest.raises(ValueError, match="num_neg"):
    drifting.validate_config(config)
  config = drifting.default_config()
  config.alpha_min = 0.5
  with pytest.raises(ValueError, match="alpha_min"):
    drifting.validate_config(config)
  config = drifting.default_config()
  config.update(classes_per_step=8, class_chunk=3)
  with pytest.raises(ValueError, match="class_chunk"):
    drifting.validate_config(config)


def _loss_and_grad(model, config, params, real, labels, key, constrain=lambda t: t):
  def gen_fn(p):
    return lambda z, a, y: model.apply(p, constrain(z), (a,), y)
  fn = lambda p: drifting.drifting_loss(gen_fn(p), real, labels, key, config)
  (loss, metrics), grads = jax.value_and_grad(fn, has_aux=True)(params)
  return loss, metrics, grads


def _float64_problem(n_c: int, n_pos: int, width: int):
  """A float64 MLP generator of 2-D points, one cluster of n_pos positives per class, guidance on:
  (config, model, params, real [n_c, n_pos, 2], labels [n_c])."""
  config = drifting.default_config()
  config.num_neg, config.num_unc, config.noise_shape = 4, 3, (4,)
  model = MLP(out_dim=2, hidden_widths=(width, width), condition_names=("alpha",),
              num_classes=n_c, embed_dim=8, dtype=jnp.float64)
  params = jax.jit(model.init)(fast_key(0), jnp.zeros((1, 4)), (jnp.ones((1,)),),
                               jnp.zeros((1,), jnp.int32))
  params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), params)
  real = jax.random.normal(jax.random.key(1), (n_c, n_pos, 2)) + jnp.arange(n_c)[:, None, None]
  return config, model, params, real, jnp.arange(n_c, dtype=jnp.int32)


def test_sharded_chunked_loss_and_grad_match_single_device(x64):
  """8 devices with the kernel in chunks compute the 1-device numbers: exact, so in float64."""
  devices = jax.devices()
  assert len(devices) == 8, "tests/conftest.py should simulate 8 CPU devices"
  config, model, params, real, labels = _float64_problem(n_c=8, n_pos=6, width=32)
  key = jax.random.key(2)

  single = jax.jit(lambda p, r, y, k: _loss_and_grad(model, config, p, r, y, k))
  loss1, metrics1, grads1 = single(params, real, labels, key)

  mesh = Mesh(np.array(devices), ("data",))
  batch = NamedSharding(mesh, P("data"))
  replicated = NamedSharding(mesh, P())
  constrain = lambda t: jax.lax.with_sharding_constraint(t, batch)
  chunked = config.copy_and_resolve_references()
  chunked.class_chunk = 4  # The kernel in two passes of 4 classes, each split over the devices.
  sharded = jax.jit(lambda p, r, y, k: _loss_and_grad(model, chunked, p, r, y, k, constrain),
                    in_shardings=(replicated, batch, batch, replicated),
                    out_shardings=replicated)
  real_s = jax.device_put(real, batch)
  assert len(real_s.sharding.device_set) == 8
  loss8, metrics8, grads8 = sharded(jax.device_put(params, replicated), real_s,
                                    jax.device_put(labels, batch), key)
  assert loss1.dtype == jnp.float64
  # Only reduction orders differ: float64 rounding times the softmax logits' size (1/tau_min ~ 50)
  # stays far below 1e-10; a per-device (not global) statistic changes the numbers by O(1).
  np.testing.assert_allclose(float(loss8), float(loss1), rtol=1e-10)
  for name in metrics1:
    np.testing.assert_allclose(float(metrics8[name]), float(metrics1[name]), rtol=1e-10, atol=1e-14)
  assert numerics.rel_err(grads8, grads1) < 1e-10
  assert float(jnp.abs(jax.tree_util.tree_leaves(grads1)[0]).max()) > 0


def _two_feature_sets(x):
  """A nonlinear 'encoder' with two feature sets: the gradient must flow through it in every pass."""
  return {"raw": x[:, None, :], "tanh": jnp.tanh(x * jnp.arange(1.0, 1.0 + x.shape[-1]))[:, None, :]}


@pytest.mark.parametrize("num_devices,accum_steps", [(1, 4), (8, 2)])
def test_accumulated_gradient_equals_one_pass(x64, num_devices, accum_steps):
  """drifting_value_and_grad in accum_steps passes of the classes (sharded or not) gives the
  one-pass loss, metrics and gradient with the same draws: exact, so compared in float64."""
  config, model, params, real, labels = _float64_problem(n_c=16, n_pos=5, width=16)
  mesh = Mesh(np.array(jax.devices()[:num_devices]), ("data",))
  batch, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  constrain = lambda t: jax.lax.with_sharding_constraint(t, batch)

  def value_and_grad(steps):
    apply = lambda p, z, a, y: constrain(model.apply(p, constrain(z), (a,), y))
    features = lambda x: jax.tree_util.tree_map(constrain, _two_feature_sets(constrain(x)))
    fn = lambda p, r, y, k: drifting.drifting_value_and_grad(
        apply, p, constrain(r), constrain(y), k, config, features, accum_steps=steps)
    return jax.jit(fn, in_shardings=(replicated, batch, batch, replicated),
                   out_shardings=replicated)(params, real, labels, jax.random.key(2))

  (loss1, metrics1), grads1 = value_and_grad(1)
  (loss_k, metrics_k), grads_k = value_and_grad(accum_steps)
  assert set(metrics_k) == set(metrics1) and "loss/tanh" in metrics1
  # Only summation orders differ (float64): far below 1e-10. A statistic of one group instead of
  # the step, or a group's gradient counted with the wrong weight, changes them by O(1/k).
  np.testing.assert_allclose(float(loss_k), float(loss1), rtol=1e-10)
  for name in metrics1:
    np.testing.assert_allclose(float(metrics_k[name]), float(metrics1[name]), rtol=1e-10,
                               atol=1e-14)
  assert numerics.rel_err(grads_k, grads1) < 1e-10
  assert float(jnp.abs(jax.tree_util.tree_leaves(grads1)[0]).max()) > 0


def test_accumulation_steps_from_classes_per_device():
  config = drifting.default_config()
  config.classes_per_step = 128
  assert drifting.accumulation_steps(config, 8) == 1  # 0: one pass.
  config.accum_classes_per_device = 4
  assert drifting.accumulation_steps(config, 8) == 4   # 16 classes per device, 4 per pass.
  assert drifting.accumulation_steps(config, 64) == 1  # 2 per device: one pass.
  config.accum_classes_per_device = 3
  with pytest.raises(ValueError, match="accum_classes_per_device=3 x 8 devices must divide"):
    drifting.accumulation_steps(config, 8)


def test_multiscale_statistics_match_loops():
  fmap = np.asarray(jax.random.normal(jax.random.key(6), (2, 8, 8, 3)))
  stats = drifting_features.multiscale_statistics(jnp.asarray(fmap), (2, 4), eps=0.0)
  assert set(stats) == {"loc", "global", "patch2", "patch4"}
  np.testing.assert_allclose(stats["loc"][1, 8 * 2 + 5], fmap[1, 2, 5], rtol=1e-6)
  np.testing.assert_allclose(stats["global"][0, 0], fmap[0].reshape(-1, 3).mean(0), rtol=1e-5)
  np.testing.assert_allclose(stats["global"][0, 1], fmap[0].reshape(-1, 3).std(0), rtol=1e-5)
  for p, grid in ((2, 4), (4, 2)):
    got = np.asarray(stats[f"patch{p}"])
    assert got.shape == (2, 2 * grid * grid, 3)
    for i in range(grid):
      for j in range(grid):
        window = fmap[:, i * p:(i + 1) * p, j * p:(j + 1) * p].reshape(2, -1, 3)
        np.testing.assert_allclose(got[:, i * grid + j], window.mean(1), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got[:, grid * grid + i * grid + j], window.std(1), rtol=1e-4,
                                   atol=1e-6)


def test_mae_loss_decreases_and_encoder_gives_feature_sets():
  import optax
  # Smooth latents (random low-frequency waves) so hidden patches are predictable from the rest.
  k = jax.random.split(jax.random.key(7), 3)
  grid = jnp.linspace(0, 2 * jnp.pi, 8)
  freq = jax.random.uniform(k[0], (16, 1, 1, 4, 2), minval=0.3, maxval=1.0)
  phase = jax.random.uniform(k[1], (16, 1, 1, 4), maxval=2 * jnp.pi)
  x = jnp.sin(freq[..., 0] * grid[:, None, None] + freq[..., 1] * grid[None, :, None] + phase)
  mae = feature_encoder.MaskedAutoencoder(channels=4, widths=(16, 32), blocks_per_stage=1,
                                          groups=4, decoder_width=16)
  params = jax.jit(mae.init)(fast_key(2), x[:1], jnp.zeros((1, 8, 8, 1), bool))
  opt = optax.adam(3e-3)

  @jax.jit
  def step(params, state, key):
    (loss, _), grads = jax.value_and_grad(feature_encoder.mae_loss, 1, has_aux=True)(
        mae.apply, params, x, key, 0.5, 2)
    updates, state = opt.update(grads, state)
    return optax.apply_updates(params, updates), state, loss

  state, losses = opt.init(params), []
  for i in range(40):
    params, state, loss = step(params, state, fast_key(i % 4))
    losses.append(float(loss))
  assert np.mean(losses[-4:]) < 0.5 * np.mean(losses[:4]), losses

  # Its feature maps as drifting feature sets (names and shapes; eval_shape compiles nothing).
  feature_fn = drifting_features.encoder_feature_fn(
      lambda z: mae.apply(params, z, method=feature_encoder.MaskedAutoencoder.features), (2,))
  shapes = jax.eval_shape(feature_fn, x[:2])
  assert {name: s.shape for name, s in shapes.items()} == {
      "stage0/loc": (2, 64, 16), "stage0/global": (2, 2, 16), "stage0/patch2": (2, 32, 16),
      "stage1/loc": (2, 16, 32), "stage1/global": (2, 2, 32), "stage1/patch2": (2, 8, 32),
      "raw": (2, 1, 256)}


def test_mlp_conditions_labels_and_meanflow_signature(x64):
  """In float64, so the jvp's du/dt meets its central difference at the rule's precision
  (truncation h^2 = 1e-8 relative; rounding 1e-16 / h = 1e-12)."""
  model = MLP(out_dim=2, hidden_widths=(16, 16), condition_names=("t", "t_minus_r"),
              num_classes=3, embed_dim=8, dtype=jnp.float64)
  z = jax.random.normal(jax.random.key(8), (5, 2))
  t, r = jnp.full((5,), 0.7), jnp.full((5,), 0.2)
  labels = jnp.array([0, 1, 2, 3, 0])  # 3 is the null label.
  params = jax.jit(model.init)(fast_key(9), z, (t, t - r), labels)
  u_fn = jax.jit(lambda z_, r_, t_, y_: model.apply(params, z_, (t_, t_ - r_), y_))
  u = u_fn(z, r, t, labels)
  assert u.shape == (5, 2)
  assert not np.allclose(u[0], u_fn(z, r, t, labels.at[0].set(1))[0])  # Labels matter.
  assert not np.allclose(u[0], u_fn(z, r, t + 0.1, labels)[0])  # Times matter.
  # The MeanFlow target's du/dt (a jvp through the MLP) against a central difference along (v, 0, 1).
  v = jax.random.normal(jax.random.key(10), (5, 2))
  _, dudt = jax.jvp(lambda z_, t_: u_fn(z_, r, t_, labels), (z, t), (v, jnp.ones_like(t)))
  h = 1e-4
  fd = (u_fn(z + h * v, r, t + h, labels) - u_fn(z - h * v, r, t - h, labels)) / (2 * h)
  assert dudt.dtype == jnp.float64 and float(jnp.abs(fd).max()) > 1e-2
  np.testing.assert_allclose(dudt, fd, rtol=1e-6, atol=1e-9)
  with pytest.raises(ValueError, match="conditions"):
    model.apply(params, z, (t,), labels)


def test_drifting_loss_groups_classes_and_sets_like_a_loop():
  """drifting_loss on encoder-style feature sets equals the public pieces applied class by class
  (features of each class's samples) and set by set."""
  n_c, n_pos, n_neg, n_unc = 2, 5, 4, 2
  config = drifting.default_config()
  config.num_neg, config.num_unc, config.temperatures = n_neg, n_unc, (0.05, 0.2)
  k = jax.random.split(jax.random.key(11), 4)
  # A fixed random conv layer stands in for the pretrained encoder (same interface, cheap).
  kernels = jax.random.normal(k[3], (3, 3, 2, 3)) / 4

  def encoder(z):
    return [jnp.tanh(jax.lax.conv_general_dilated(z, kernels, (1, 1), "SAME",
                                                  dimension_numbers=("NHWC", "HWIO", "NHWC")))]

  feature_fn = drifting_features.encoder_feature_fn(encoder, (2, 4), include_raw=False)
  real = jax.random.normal(k[0], (n_c, n_pos, 4, 4, 2)) + jnp.arange(n_c)[:, None, None, None, None]
  uncond = jax.random.normal(k[1], (n_c, n_unc, 4, 4, 2)) * 3.0
  labels = jnp.array([4, 2])
  shift = jnp.array([0.5, -1.0, 2.0, 0.0, 1.0])  # Per label, so outputs depend on the class.
  gen_fn = lambda b: (lambda z, a, y: b * z + shift[y][:, None, None, None] +
                      0.1 * a[:, None, None, None])
  loss_fn = lambda b: drifting.drifting_loss(gen_fn(b), real, labels, k[2], config, feature_fn,
                                             uncond_real=uncond)
  (loss, metrics), grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(jnp.ones(()))
  sets = {"stage0/loc", "stage0/global", "stage0/patch2"}  # A 4x4 map: no 4x4 patches.
  assert {f"loss/{name}" for name in sets} == {m for m in metrics if m.startswith("loss/")}
  assert float(metrics["alpha_mean"]) > 1.0

  # The same numbers from the public pieces.
  k_noise, k_alpha, _ = jax.random.split(k[2], 3)
  alpha = drifting.sample_alpha(k_alpha, n_c, config)
  noise = jax.random.normal(k_noise, (n_c * n_neg, 4, 4, 2))
  w = drifting.guidance_weight(alpha, n_neg, n_unc)

  def manual(b):
    gen = gen_fn(b)(noise, jnp.repeat(alpha, n_neg), jnp.repeat(labels, n_neg))
    gen = gen.reshape(n_c, n_neg, 4, 4, 2)
    per_class = lambda t: [feature_fn(t[c]) for c in range(n_c)]
    f_gen, f_pos, f_unc = per_class(gen), per_class(real), per_class(uncond)
    total = 0.0
    for name in sets:
      stack = lambda f: jnp.stack([fc[name] for fc in f])
      v, scale, _ = drifting_field.feature_set_field(stack(f_gen), stack(f_pos), stack(f_unc), w,
                                               (0.05, 0.2))
      total = total + drifting_field.drifting_mse(stack(f_gen), v, scale)
    return total

  want, want_grad = jax.jit(jax.value_and_grad(manual))(jnp.ones(()))
  np.testing.assert_allclose(float(loss), float(want), rtol=1e-5)
  np.testing.assert_allclose(float(grad), float(want_grad), rtol=1e-4)
  assert abs(float(grad)) > 0


def test_field_traces_when_a_step_has_more_than_2_31_feature_entries():
  # The released pixel batches (128 classes x 64 generated x 4096 locations x 5120 channels) have
  # more entries than int32 holds; the normalisers must not pass the count to JAX as an integer.
  # Traced with abstract shapes only: nothing of that size is allocated.
  n_c, n, num_loc, ch = 128, 64, 512, 1024  # 2^32 entries.
  s = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.bfloat16)
  v, scale, rms = jax.eval_shape(
      lambda a, b, c, w: drifting_field.feature_set_field(a, b, c, w, (0.05, 0.2)),
      s(n_c, n, num_loc, ch), s(n_c, 8, num_loc, ch), s(n_c, 4, num_loc, ch),
      jax.ShapeDtypeStruct((n_c,), jnp.float32))
  assert v.shape == (n_c, n, num_loc, ch) and scale.shape == () and rms.shape == (2,)
