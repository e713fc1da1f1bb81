"""DiT: shapes, parameter counts against the paper, adaLN-Zero initialisation, jit and jvp."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mf_jax.models import attention, dit
import numerics

PAPER_PARAMS_M = {"B/2": 131, "M/2": 308, "L/2": 459, "XL/2": 676}  # MeanFlow paper, Table 2.


def _tiny(**kw):
  base = dict(variant="S/2", depth=2, hidden_size=32, num_heads=2, image_size=8, channels=3,
              num_classes=5)
  base.update(kw)
  return dit.DiT(**base)


@pytest.mark.parametrize("variant", sorted(PAPER_PARAMS_M))
def test_parameter_count_matches_paper(variant):
  n = dit.count_params(variant, image_size=32, channels=4, num_classes=1000)
  assert abs(n / 1e6 - PAPER_PARAMS_M[variant]) / PAPER_PARAMS_M[variant] < 0.01


def test_count_params_agrees_with_initialised_model():
  model = _tiny()
  x = jnp.zeros((1, 8, 8, 3))
  params = model.init(jax.random.key(0), x, (jnp.zeros(1), jnp.zeros(1)), jnp.zeros(1, jnp.int32))
  real = sum(p.size for p in jax.tree_util.tree_leaves(params))
  assert dit.count_params("S/2", 8, 3, 5, depth=2, hidden_size=32, num_heads=2) == real


@pytest.mark.parametrize("patch", [1, 2, 4, 8])
def test_shapes_and_zero_output_at_init(patch):
  model = _tiny(variant=f"S/{patch}")
  x = jax.random.normal(jax.random.key(0), (3, 8, 8, 3))
  t = jnp.array([0.1, 0.5, 1.0])
  labels = jnp.array([0, 4, 5])  # 5 is the null class.
  params = model.init(jax.random.key(1), x, (t, t), labels)
  out = model.apply(params, x, (t, t), labels)
  assert out.shape == x.shape
  np.testing.assert_array_equal(out, 0.0)  # adaLN-Zero: the network starts as zero.


def test_labels_per_sample_and_the_gap_t_minus_r_reach_the_output(x64):
  """The network the objective calls, train_state.meanflow_u_fn, feeds (t, t - r): it equals the
  DiT applied to (t, t - r), and moving r at fixed t changes u. Labels act per sample.
  (The value of the jvp through the DiT is checked against finite differences in test_meanflow.)"""
  from mf_jax.objectives.meanflow import u_fn as meanflow_u_fn  # pylint: disable=import-outside-toplevel
  model = _tiny(dtype=jnp.float64, param_dtype=jnp.float64)
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  t, r = jnp.array([0.75, 0.5]), jnp.array([0.25, 0.125])
  labels = jnp.array([1, 2])
  params = jax.jit(model.init)(jax.random.key(1), x, (t, t - r), labels)
  leaves, tree = jax.tree_util.tree_flatten(params)  # Leave the zero-init point.
  params = tree.unflatten([p + 0.1 * jax.random.normal(jax.random.key(i), p.shape, p.dtype)
                           for i, p in enumerate(leaves)])
  u_fn = jax.jit(meanflow_u_fn(model, params))
  out = u_fn(x, r, t, labels)
  want = jax.jit(model.apply)(params, x, (t, t - r), labels)
  assert numerics.rel_err(out, want) < 1e-12
  moved = u_fn(x, jnp.zeros_like(r), t, labels)  # Same t, another gap.
  assert numerics.rel_err(moved[0], out[0]) > 1e-3 and numerics.rel_err(moved[1], out[1]) > 1e-3
  # The class embedding is used, per sample.
  out2 = u_fn(x, r, t, jnp.array([3, 2]))
  assert numerics.rel_err(out2[0], out[0]) > 1e-3
  assert numerics.rel_err(out2[1], out[1]) < 1e-12


def test_attention_implementations_agree_in_value_jvp_and_vjp():
  """XLA attention (jax.nn.dot_product_attention) computes the einsum attention's function and
  derivatives to float32 accuracy.

  Truth: einsum attention in float64. The XLA path's float32 error in the value, the jvp tangent
  and the vjp cotangents must be within a small multiple of the einsum path's own float32 error.
  Logits here are O(1), so a 1% wrong softmax scale moves the output by ~1e-2 relative, while
  float32 rounding is ~1e-7.
  """
  b, n, h, d = 2, 6, 3, 8
  arrays = [jax.random.normal(jax.random.key(i), (b, n, h, d)) for i in range(7)]
  arrays[0], arrays[1] = 1.5 * arrays[0], 1.5 * arrays[1]  # Logit std ~2: far from uniform.

  def derivatives(attn, q, k, v, tq, tk, tv, ct):
    out, tangent = jax.jvp(attn, (q, k, v), (tq, tk, tv))
    return out, tangent, jax.vjp(attn, q, k, v)[1](ct)

  fused = derivatives(attention.xla_attention, *arrays)
  plain = derivatives(dit.einsum_attention, *arrays)
  with jax.enable_x64(True):
    truth = derivatives(dit.einsum_attention, *[jnp.asarray(a, jnp.float64) for a in arrays])
  for name, f, p, t in zip(("value", "jvp", "vjp"), fused, plain, truth):
    numerics.assert_as_accurate(f, p, t, what=f"xla attention {name}")


@pytest.mark.parametrize("variant", ["B2", "Q/2", "B/3", "", "b/2"])
def test_bad_variant_names_allowed_values(variant):
  with pytest.raises(ValueError, match=r"model.variant=.*expected NAME/PATCH"):
    dit.parse_variant(variant)


def test_patch_must_divide_image():
  with pytest.raises(ValueError, match="does not divide"):
    _tiny(variant="S/4", image_size=6).dims()


def _jvp_loss_value_and_grad(model, params, x, t, labels):
  """A loss through jax.jvp (as MeanFlow's) and its gradient: exercises remat under jvp and grad."""
  def loss(p):
    tangent = jax.jvp(lambda s: model.apply(p, x, (s, s), labels), (t,), (jnp.ones_like(t),))[1]
    return jnp.sum(tangent ** 2)
  return jax.jit(jax.value_and_grad(loss))(params)


def _perturbed_params(model, x, t, labels):
  params = model.init(jax.random.key(1), x, (t, t), labels)
  return jax.tree_util.tree_map(lambda p: p + 0.05, params)  # Leave the zero-init point.


def test_remat_and_xla_attention_keep_values_and_gradients():
  """Remat is exact (float64); remat and XLA attention are as accurate as the plain float32 DiT.

  Under jvp + grad this loss is badly conditioned: the plain float32 gradient is off by ~1e-4
  relative, by an amount that differs between processors. So exactness is checked in float64
  (rounding 1e-16 times a condition of ~1e3 stays below 1e-12), and the float32 paths are bounded
  by a multiple of the plain float32 path's own error against the float64 truth on this machine.
  A dropped remat path or a wrong attention changes the results by O(1).
  """
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  t, labels = jnp.array([0.3, 0.9]), jnp.array([1, 2])
  params = _perturbed_params(_tiny(), x, t, labels)
  with jax.enable_x64(True):
    to64 = lambda tree: jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), tree)
    f64 = dict(dtype=jnp.float64, param_dtype=jnp.float64)
    args64 = (to64(params), to64(x), to64(t), labels)
    truth = _jvp_loss_value_and_grad(_tiny(**f64), *args64)
    remat64 = _jvp_loss_value_and_grad(_tiny(remat=True, **f64), *args64)
  assert numerics.rel_err(remat64[0], truth[0]) < 1e-10
  assert numerics.rel_err(remat64[1], truth[1]) < 1e-10

  plain = _jvp_loss_value_and_grad(_tiny(), params, x, t, labels)
  for name, other in (("remat", _tiny(remat=True)), ("xla", _tiny(attention_impl="xla"))):
    got = _jvp_loss_value_and_grad(other, params, x, t, labels)
    numerics.assert_as_accurate(got[0], plain[0], truth[0], what=f"{name} loss")
    numerics.assert_as_accurate(got[1], plain[1], truth[1], what=f"{name} gradient")
