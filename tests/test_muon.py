"""optim.name="muon" (train_state.make_optimizer -> optax.contrib.muon): the update of small
matrices against Muon written out here in numpy float64 (Nesterov momentum, the quintic
Newton-Schulz iteration, the shape scale), the Adam part on the other leaves, which parameters of
a tiny iMF in-context DiT go to Muon and which to Adam, and equality with pMF's optimizer call.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import imf_digits, tiny
from mf_jax import train_state as ts

NS_COEFFS = (3.4445, -4.7750, 2.0315)  # Muon's quintic (Jordan 2024), 5 steps.
EPS = 1e-8  # optax.contrib.muon's default eps: Frobenius normalisation and Adam's denominator.
# Distinct values, so that a swapped field (Adam's b1 for Muon's beta, ...) changes the numbers.
LR, B1, B2, MUON_BETA, WEIGHT_DECAY = 0.01, 0.8, 0.9, 0.7, 0.1


def newton_schulz(m):
  """Five steps X <- a X + (b A + c A^2) X, A = X X^T, from X = M / (|M|_F + eps); a tall
  matrix is orthogonalised through its transpose (the iteration on the smaller Gram matrix)."""
  tall = m.shape[0] > m.shape[1]
  x = m.T if tall else m
  x = x / (np.linalg.norm(x) + EPS)
  a, b, c = NS_COEFFS
  for _ in range(5):
    gram = x @ x.T
    x = a * x + (b * gram + c * gram @ gram) @ x
  return x.T if tall else x


def muon_reference(grads, param):
  """Updates of one 2-D parameter [fan_in, fan_out] over the steps, in float64.

  Momentum m_t = beta m_{t-1} + (1 - beta) g_t; the Nesterov estimate with bias corrections
  (optax's form) beta m_t / (1 - beta^(t+1)) + (1 - beta) g_t / (1 - beta^t); orthogonalised;
  scaled by sqrt(max(1, fan_out / fan_in)); plus decoupled weight decay; times -lr.
  """
  beta, m, out = MUON_BETA, np.zeros_like(param), []
  scale = np.sqrt(max(1.0, param.shape[1] / param.shape[0]))
  for t, g in enumerate(grads, 1):
    m = beta * m + (1 - beta) * g
    nesterov = beta * m / (1 - beta ** (t + 1)) + (1 - beta) * g / (1 - beta ** t)
    out.append(-LR * (scale * newton_schulz(nesterov) + WEIGHT_DECAY * param))
  return out


def adam_reference(grads, param):
  """AdamW with Nesterov momentum (what muon applies to the other leaves), in float64."""
  m, v, out = np.zeros_like(param), np.zeros_like(param), []
  for t, g in enumerate(grads, 1):
    m, v = B1 * m + (1 - B1) * g, B2 * v + (1 - B2) * g * g
    m_hat = B1 * m / (1 - B1 ** (t + 1)) + (1 - B1) * g / (1 - B1 ** t)
    v_hat = v / (1 - B2 ** t)
    out.append(-LR * (m_hat / (np.sqrt(v_hat) + EPS) + WEIGHT_DECAY * param))
  return out


def muon_config(**optim):
  config = tiny.get_config()
  config.optim.update(dict(dict(name="muon", learning_rate=LR, b1=B1, b2=B2,
                                muon_beta=MUON_BETA, weight_decay=WEIGHT_DECAY), **optim))
  return config


def test_two_updates_match_numpy_muon_and_adam(x64):
  """A wide (3 x 5, scale sqrt(5/3)) and a tall (6 x 4, transposed, scale 1) matrix go through
  Muon, a bias and a 4-D kernel through Adam; two steps, so the momentum enters.

  float64 on both sides: the same operations in another order differ by rounding (1e-16)
  amplified by five quintic steps (slope at most a = 3.4 each: ~1e3), so 1e-10 relative; a wrong
  coefficient, momentum, scale or decay changes an update by O(1)."""
  rng = np.random.RandomState(0)
  shapes = {"wide": (3, 5), "tall": (6, 4), "bias": (5,), "conv": (2, 2, 1, 3)}
  params = {k: rng.normal(size=s) for k, s in shapes.items()}
  grads = [{k: rng.normal(size=s) for k, s in shapes.items()} for _ in range(2)]
  optimizer = ts.make_optimizer(muon_config())
  state = optimizer.init(jax.tree_util.tree_map(jnp.asarray, params))
  got = []
  for g in grads:
    updates, state = optimizer.update(jax.tree_util.tree_map(jnp.asarray, g), state,
                                      jax.tree_util.tree_map(jnp.asarray, params))
    got.append(jax.device_get(updates))
  for name in shapes:
    reference = muon_reference if name in ("wide", "tall") else adam_reference
    want = reference([g[name] for g in grads], params[name])
    for step in range(2):
      assert got[step][name].dtype == np.float64
      err = np.linalg.norm(got[step][name] - want[step]) / np.linalg.norm(want[step])
      assert err < 1e-10, (name, step, err)
  # Muon's direction is near-orthogonal: singular values of the orthogonalised momentum (update
  # without decay, over lr * scale) are spread around 1 (~[0.7, 1.2] for this quintic), unlike
  # the gradient's.
  for name in ("wide", "tall"):
    scale = np.sqrt(max(1.0, shapes[name][1] / shapes[name][0]))
    direction = -(got[1][name] / LR + WEIGHT_DECAY * params[name]) / scale
    s = np.linalg.svd(direction, compute_uv=False)
    assert 0.5 < s.min() and s.max() < 1.5, (name, s)


def test_the_default_muon_is_pmf_optimizer_bit_for_bit():
  """optim.name="muon" with the other optim fields at their defaults (b1 0.9, b2 0.95, muon_beta
  0.95, no decay, constant lr) is pMF's `optax.contrib.muon(learning_rate=lr, adam_b2=0.95)`:
  identical updates on a tiny DiT's parameters, two steps, float32."""
  config = tiny.get_config()
  config.optim.update(name="muon", learning_rate=1e-3)
  params = ts.build_model(config).init(jax.random.key(0), *ts.example_inputs(config))
  ours, pmf = ts.make_optimizer(config), optax.contrib.muon(learning_rate=1e-3, adam_b2=0.95)
  s_ours, s_pmf = ours.init(params), pmf.init(params)
  for i in range(2):
    grads = jax.tree_util.tree_map(
        lambda p, k=jax.random.key(i): jax.random.normal(jax.random.fold_in(k, p.size), p.shape),
        params)
    u_ours, s_ours = jax.jit(ours.update)(grads, s_ours, params)
    u_pmf, s_pmf = jax.jit(pmf.update)(grads, s_pmf, params)
    for a, b in zip(jax.tree_util.tree_leaves(u_ours), jax.tree_util.tree_leaves(u_pmf)):
      np.testing.assert_array_equal(a, b)


def routed(config, params):
  """(names Muon keeps momentum for, names Adam does), from the optimizer's own state."""
  partition = ts.make_optimizer(config).init(params)[-1]  # optax's PartitionState.

  def names(tree):
    return {"/".join(str(k.key) for k in path)
            for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}
  return (names(partition.inner_states["muon"].inner_state[0].mu),
          names(partition.inner_states["adam"].inner_state[0].mu))


def tiny_incontext_dit():
  config = imf_digits.get_config()
  config.model.update(depth=2, hidden_size=32, num_heads=2, head_depth=1)
  config.optim.name = "muon"
  params = ts.build_model(config).init(jax.random.key(0), *ts.example_inputs(config))
  return config, params


TOKENS = {f"params/{k}_tokens" for k in ("class", "omega", "t_min", "t_max", "time")}


@pytest.mark.parametrize("exclude", [(), ("_tokens$", "embedding$")])
def test_routing_of_the_incontext_dit(exclude):
  """Muon gets every 2-D weight: the Dense kernels (attention, SwiGLU, embedder MLPs, final
  layers); this network stores its prefix tokens [n, width] and label table [classes + 1, width]
  as 2-D arrays, so they go to Muon too unless optim.muon_exclude names them (pMF stores them
  3-D, [1, n, width], which Adam gets by shape: next test). Adam gets the biases, the RMSNorm
  scales, the zero-initialised gates and the 4-D patch convolution.

  The expected sets come from the parameters' names (their role), not from their shapes."""
  config, params = tiny_incontext_dit()
  config.optim.muon_exclude = exclude
  names = {"/".join(str(k.key) for k in path)
           for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
  dense = {n for n in names if n.endswith("/kernel") and not n.startswith("params/patch_embed")}
  tables = TOKENS | {"params/label_embedder/embedding"}
  muon, adam = routed(config, params)
  want_muon = dense if exclude else dense | tables
  assert muon == want_muon
  assert adam == names - want_muon
  assert "params/patch_embed/kernel" in adam and "params/u_block_0/attn_scale" in adam
  assert {"params/shared_block_0/attn/q/kernel", "params/u_final/kernel"} <= muon
  # 4 embedder MLPs x 2 + 3 blocks x (4 attention + 3 SwiGLU) + 2 final layers.
  assert len(dense) == 4 * 2 + 3 * 7 + 2


def test_routing_by_shape_sends_3d_tokens_and_conv_kernels_to_adam():
  """pMF's layout: learned position embedding and tokens [1, n, w], a p x p conv [p, p, 3, c]."""
  config = muon_config(weight_decay=0.0)
  params = {"pos_embed": jnp.zeros((1, 6, 4)), "class_tokens": jnp.zeros((1, 2, 4)),
            "proj1": {"kernel": jnp.zeros((2, 2, 3, 4)), "bias": jnp.zeros((4,))},
            "attn": {"kernel": jnp.zeros((4, 8))}, "final": {"kernel": jnp.zeros((4, 12))}}
  muon, adam = routed(config, params)
  assert muon == {"attn/kernel", "final/kernel"}
  assert adam == {"pos_embed", "class_tokens", "proj1/kernel", "proj1/bias"}


def test_a_converted_workdir_starts_muon_with_its_coefficients():
  """convert.workdir.fresh_state (every converter's state) holds the optimizer's own initial
  state: Muon keeps its Newton-Schulz coefficients there, which an all-zero state would lose (a
  zero update for every 2-D weight when training resumes from the converted checkpoint)."""
  from mf_jax.convert import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  config = tiny.get_config()
  config.optim.name = "muon"
  params = ts.build_model(config).init(jax.random.key(0), *ts.example_inputs(config))
  state = workdir_lib.fresh_state(config, params)
  muon_state = state.opt_state[-1].inner_states["muon"].inner_state[0]
  np.testing.assert_allclose(np.asarray(muon_state.ns_coeffs), NS_COEFFS, rtol=1e-7)
  assert not any(np.any(m) for m in jax.tree_util.tree_leaves(muon_state.mu))  # Momentum zero.
