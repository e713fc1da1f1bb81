"""DiT: shapes, parameter counts against the paper, adaLN-Zero initialisation, jit and jvp."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mf_jax.models import dit

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


def test_jit_and_jvp_through_dit():
  model = _tiny()
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  t, r = jnp.array([0.3, 0.9]), jnp.array([0.1, 0.2])
  labels = jnp.array([1, 2])
  params = model.init(jax.random.key(1), x, (t, t - r), labels)
  params = jax.tree_util.tree_map(lambda p: p + 0.05, params)  # Leave the zero-init point.
  f = jax.jit(lambda z, r, t: model.apply(params, z, (t, t - r), labels))
  out, tangent = jax.jvp(f, (x, r, t), (jnp.ones_like(x), jnp.zeros_like(r), jnp.ones_like(t)))
  assert out.shape == tangent.shape == x.shape
  assert np.all(np.isfinite(tangent)) and float(jnp.abs(tangent).max()) > 0
  # The class embedding is used, per sample.
  out2 = model.apply(params, x, (t, t - r), jnp.array([3, 2]))
  assert not np.allclose(out2[0], out[0]) and np.allclose(out2[1], out[1], atol=1e-6)


def test_attention_implementations_agree():
  q, k, v = (jax.random.normal(jax.random.key(i), (2, 6, 3, 8)) for i in range(3))
  np.testing.assert_allclose(dit.einsum_attention(q, k, v), jax.nn.dot_product_attention(q, k, v),
                             atol=1e-5)


@pytest.mark.parametrize("variant", ["B2", "Q/2", "B/3", "", "b/2"])
def test_bad_variant_names_allowed_values(variant):
  with pytest.raises(ValueError, match=r"model.variant=.*expected NAME/PATCH"):
    dit.parse_variant(variant)


def test_patch_must_divide_image():
  with pytest.raises(ValueError, match="does not divide"):
    _tiny(variant="S/4", image_size=6).dims()


def test_remat_and_fused_attention_keep_values_and_gradients():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  t, labels = jnp.array([0.3, 0.9]), jnp.array([1, 2])
  plain = _tiny()
  params = plain.init(jax.random.key(1), x, (t, t), labels)
  params = jax.tree_util.tree_map(lambda p: p + 0.05, params)
  def loss(model):
    return lambda p: jnp.sum(jax.jvp(lambda s: model.apply(p, x, (s, s), labels), (t,),
                                     (jnp.ones_like(t),))[1] ** 2)
  ref_val, ref_grad = jax.value_and_grad(loss(plain))(params)
  for other in (_tiny(remat=True), _tiny(attention_impl="fused")):
    val, grad = jax.value_and_grad(loss(other))(params)
    np.testing.assert_allclose(val, ref_val, rtol=1e-4)
    flat = lambda g: np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(g)])
    # Whole-gradient relative error: near-zero leaves make per-element ratios meaningless in fp32.
    assert np.linalg.norm(flat(grad) - flat(ref_grad)) < 1e-4 * np.linalg.norm(flat(ref_grad))
