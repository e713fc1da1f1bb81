"""The improved MeanFlow (iMF) objective and sampler as pure functions of a network function.

Geng, Lu, Wu, Shechtman, Kolter, He, "Improved Mean Flows" (arXiv 2512.02012); checked against the
official JAX code (Lyy-iiis/imeanflow, imf.py at bf60cd7cb653f6628e59d48034b333c5eba445e2).

Conventions (as mf_jax/meanflow.py): t = 0 is data, t = 1 is noise; z_t = (1 - t) x + t e and the
conditional velocity is e - x; r <= t. Per-sample scalars have shape [B]; z, x, e, u, v [B, ...].
The null (unconditional) label is `num_classes`.

The network function is net_fn(z, t, h, omega, t_min, t_max, labels) -> (u, v): u the average
velocity over [t - h, t], v the instantaneous velocity (the auxiliary head); omega the guidance
scale and [t_min, t_max] the guidance interval, all [B]. The iMF network itself ignores t (it sees
h = t - r only); t is an argument so that exact fields (tests) and other networks fit the same slot.

Per step: guidance is a condition. omega ~ p(omega) ~ omega^-beta on [1, omega_max), the interval
t_min ~ U[0, 1/2), t_max ~ U[1/2, 1) (r = t rows get [0, 1]). The target is
  v_g = (e - x) + (1 - 1/omega') (v(z_t | c, omega') - v(z_t | null, 1)),  stop-gradiented,
with omega' = omega for t in [t_min, t_max] and 1 outside; v(.) is the network's own v head at h = 0
on the interval [0, 1]. Class-dropped rows get the null label and v_g = e - x. The jvp of u runs
along (z: v(z_t | c, omega'), t: 1, r: 0); V = u + (t - r) sg(du/dt) and
  loss = mean_B [ w(|V - v_g|^2) + w(|v - v_g|^2) ],  w(d) = d / sg((d + c)^p), c = 0.01, p = 1.
"""
import math
from typing import Callable, Mapping, NamedTuple, Tuple

import jax
import jax.numpy as jnp
import ml_collections

from mf_jax import config_fields, meanflow, sampling
from mf_jax.config_fields import FRACTION, NON_NEGATIVE, Field, choice, number

Array = jax.Array
# net_fn(z, t, h, omega, t_min, t_max, labels) -> (u, v); see the module docstring.
NetFn = Callable[..., Tuple[Array, Array]]


def per_row(s: Array, like: Array) -> Array:
  """[B] -> [B, 1, ..., 1] so per-sample scalars broadcast against [B, ...] tensors."""
  return s.reshape(s.shape + (1,) * (like.ndim - s.ndim))


# The `imf` config section (mf_jax/config_fields.py), the official iMF settings (the official code's
# configs/default.py). Names follow the `meanflow` section where the meaning is the same, so
# meanflow's time sampler and class-dropout layout read this section directly.
CONFIG = dict(
    num_classes=Field(1000, NON_NEGATIVE, "leave it linked to data.num_classes"),
    # MeanFlow's time sampler, the same fields and defaults: logit-normal(-0.4, 1) draws, t = max
    # and r = min of two (the r = t rows keep t = max, as the official code).
    **{name: meanflow.CONFIG[name] for name in ("time_sampler", "time_mu", "time_sigma",
                                                "time_mu_r", "time_sigma_r", "time_pairing")},
    # Official data_proportion = 0.5: half the batch has r = t.
    r_neq_t_ratio=Field(0.5, FRACTION, "0.5 (iMF: half the batch has r = t)"),
    omega_beta=Field(1.0, number(0.0), "1.0 (iMF: p(omega) ~ 1/omega; official cfg_beta)"),
    omega_max=Field(8.0, number(1.0, lo_open=True), "8.0 (iMF: 1 + s_max, s_max = 7)"),
    class_dropout=Field(0.1, number(0.0, 1.0, hi_open=True), "0.1 (iMF)"),
    # The official layout (meanflow.class_dropout_mask).
    class_dropout_rows=Field("r_eq_t_first", choice(*meanflow.DROPOUT_ROWS),
                             "r_eq_t_first (official layout)"),
    adaptive_p=Field(1.0, number(0.0), "1.0 (iMF; official norm_p)"),
    adaptive_c=Field(0.01, number(0.0, lo_open=True), "0.01 (iMF; official norm_eps)"),
)


def default_config() -> ml_collections.ConfigDict:
  """The `imf` section's defaults."""
  return config_fields.section(CONFIG)


class Draws(NamedTuple):
  """The random quantities of one iMF step, each [B] except e ([B, ...] like x)."""
  r: Array
  t: Array
  e: Array
  omega: Array
  t_min: Array
  t_max: Array
  dropped: Array  # bool: rows trained with the null label and target e - x.


def omega_from_uniform(u: Array, beta: float, omega_max: float) -> Array:
  """The inverse CDF of p(omega) ~ omega^-beta on [1, omega_max) at u in [0, 1).

  beta = 1: omega = omega_max^u. Otherwise omega = (1 + u (omega_max^(1 - beta) - 1))^(1/(1 - beta)).
  """
  if beta == 1.0:
    return jnp.exp(u * math.log(omega_max))
  a = 1.0 - beta
  return jnp.exp(jnp.log1p(u * math.expm1(a * math.log(omega_max))) / a)


def sample_omega(key: Array, batch_size: int, beta: float, omega_max: float) -> Array:
  """omega ~ p(omega) ~ omega^-beta on [1, omega_max), [B]."""
  return omega_from_uniform(jax.random.uniform(key, (batch_size,)), beta, omega_max)


def sample_interval(key: Array, r_neq_t: Array) -> Tuple[Array, Array]:
  """(t_min, t_max), [B] each: U[0, 1/2) and U[1/2, 1) where r != t, [0, 1] where r = t."""
  k_lo, k_hi = jax.random.split(key)
  shape = r_neq_t.shape
  t_min = jax.random.uniform(k_lo, shape, minval=0.0, maxval=0.5)
  t_max = jax.random.uniform(k_hi, shape, minval=0.5, maxval=1.0)
  return jnp.where(r_neq_t, t_min, 0.0), jnp.where(r_neq_t, t_max, 1.0)


def sample_draws(key: Array, x: Array, config) -> Draws:
  """All draws of one step for data x [B, ...]; rows with r != t sit where meanflow puts them."""
  k_time, k_noise, k_interval, k_omega, k_drop = jax.random.split(key, 5)
  batch = x.shape[0]
  r, t = meanflow.sample_times(k_time, batch, config)
  period, n = meanflow.r_neq_t_pattern(batch, config.r_neq_t_ratio)
  t_min, t_max = sample_interval(k_interval, jnp.arange(batch) % period < n)
  return Draws(r=r, t=t, e=jax.random.normal(k_noise, x.shape, x.dtype),
               omega=sample_omega(k_omega, batch, config.omega_beta, config.omega_max),
               t_min=t_min, t_max=t_max,
               dropped=meanflow.class_dropout_mask(k_drop, batch, config))


def interval_omega(omega: Array, t: Array, t_min: Array, t_max: Array) -> Array:
  """omega' = omega where t_min <= t <= t_max, else 1 (no guidance), [B]."""
  return jnp.where((t >= t_min) & (t <= t_max), omega, 1.0)


def guided_target(net_fn: NetFn, z: Array, t: Array, v_t: Array, labels: Array, omega: Array,
                  t_min: Array, t_max: Array, num_classes: int) -> Tuple[Array, Array]:
  """(v_g, v_c): the guided target and the conditional v-head velocity (the jvp tangent).

  Two inference calls of the v head at h = 0 on the interval [0, 1]: v_c = v(z | c, omega') and
  v_u = v(z | null, 1). The official code makes a third call, v(z | c, omega), whose result it
  keeps only for r = t rows; their interval is [0, 1], where omega' = omega, so it equals v_c.
  """
  zeros, ones = jnp.zeros_like(t), jnp.ones_like(t)
  v_head = lambda w, y: net_fn(z, t, zeros, w, zeros, ones, y)[1]
  w = interval_omega(omega, t, t_min, t_max)
  v_c = v_head(w, labels)
  v_u = v_head(ones, jnp.full_like(labels, num_classes))
  v_g = v_t + per_row(1.0 - 1.0 / w, v_t) * (v_c - v_u)
  return jax.lax.stop_gradient(v_g), jax.lax.stop_gradient(v_c)


def compound_velocity(net_fn: NetFn, z: Array, r: Array, t: Array, tangent: Array, omega: Array,
                      t_min: Array, t_max: Array, labels: Array) -> Tuple[Array, Array, Array]:
  """(V, v, u): V = u + (t - r) sg(du/dt), du/dt the jvp of u along (z: tangent, t: 1, r: 0).

  v is the v head of the same forward (the jvp's auxiliary output), u the primal. Gradients flow
  through the primal u and v only.
  """
  def u_and_v(z_, t_, r_):
    return net_fn(z_, t_, t_ - r_, omega, t_min, t_max, labels)
  u, dudt, v = jax.jvp(u_and_v, (z, t, r), (tangent, jnp.ones_like(t), jnp.zeros_like(r)),
                       has_aux=True)
  return u + per_row(t - r, u) * jax.lax.stop_gradient(dudt), v, u


def noisy_sample(x: Array, e: Array, t: Array) -> Array:
  """z_t = (1 - t) x + t e, [B, ...]."""
  return (1.0 - per_row(t, x)) * x + per_row(t, x) * e


class Part(NamedTuple):
  """The network's outputs on some rows of the batch, with those rows' inputs.

  rows: {name: [b, ...]} (z, v_t, t, r, ... and whatever extra rows the caller passed); u the
  average velocity, V the compound velocity (u where r = t), v the v head, v_g the target.
  """
  rows: Mapping[str, Array]
  u: Array
  V: Array
  v: Array
  v_g: Array


def _rows(z, v_t, labels, draws, config, extra_rows):
  return dict(z=z, v_t=v_t, r=draws.r, t=draws.t, omega=draws.omega, t_min=draws.t_min,
              t_max=draws.t_max, y=labels, dropped=draws.dropped,
              y_in=jnp.where(draws.dropped, config.num_classes, labels), **(extra_rows or {}))


def imf_whole_batch(net_fn: NetFn, z: Array, v_t: Array, labels: Array, draws: Draws,
                    config, extra_rows=None) -> Part:
  """The reference form of the iMF terms: every network call on the whole batch (any row layout).

  z = z_t and v_t the conditional velocity (e - x for iMF), [B, ...]; extra_rows ({name: [B, ...]})
  ride along in Part.rows.
  """
  rows = _rows(z, v_t, labels, draws, config, extra_rows)
  # The guidance calls see the labels before dropout (as the official code); dropped rows then
  # train on the plain target with the null label.
  v_g, v_c = guided_target(net_fn, z, draws.t, v_t, labels, draws.omega, draws.t_min,
                           draws.t_max, config.num_classes)
  v_g = jnp.where(per_row(draws.dropped, v_t), v_t, v_g)
  V, v, u = compound_velocity(net_fn, z, draws.r, draws.t, v_c, draws.omega, draws.t_min,
                              draws.t_max, rows["y_in"])
  return Part(rows=rows, u=u, V=V, v=v, v_g=v_g)


def imf_split_parts(net_fn: NetFn, z: Array, v_t: Array, labels: Array, draws: Draws,
                    config, extra_rows=None) -> Tuple[Part, ...]:
  """imf_whole_batch computed per part (rows with r != t, rows with r = t): the same terms row for
  row, fewer network calls.

  Needs the layout of sample_draws: rows with r != t where meanflow.r_neq_t_pattern puts them,
  and r = t rows on the interval [0, 1]. On r = t rows (t - r) du/dt vanishes, so they take a
  plain forward instead of the jvp; and there omega' = omega with h = 0 on [0, 1], so for kept
  labels the forward's own v head is v(z | c, omega'), which saves the conditional guidance call.
  Per image, in forwards F: r != t rows 2F of guidance calls plus the jvp and its backward, r = t
  rows 1F plus a forward and backward (the official code: 3F of guidance calls for every row).
  """
  rows = _rows(z, v_t, labels, draws, config, extra_rows)
  period, n_avg = meanflow.r_neq_t_pattern(z.shape[0], config.r_neq_t_ratio)
  avg, inst = meanflow._split_pattern(rows, period, n_avg)  # pylint: disable=protected-access
  cond = lambda part: (part["omega"], part["t_min"], part["t_max"])
  keep_target = lambda part, v_g: jnp.where(per_row(part["dropped"], v_g), part["v_t"], v_g)
  parts = []
  if n_avg > 0:
    v_g, v_c = guided_target(net_fn, avg["z"], avg["t"], avg["v_t"], avg["y"], *cond(avg),
                             config.num_classes)
    v_g = keep_target(avg, v_g)
    V, v, u = compound_velocity(net_fn, avg["z"], avg["r"], avg["t"], v_c, *cond(avg),
                                avg["y_in"])
    parts.append(Part(rows=avg, u=u, V=V, v=v, v_g=v_g))
  if n_avg < period:
    zeros, ones = jnp.zeros_like(inst["t"]), jnp.ones_like(inst["t"])
    u, v = net_fn(inst["z"], inst["t"], zeros, *cond(inst), inst["y_in"])
    v_u = jax.lax.stop_gradient(net_fn(inst["z"], inst["t"], zeros, ones, zeros, ones,
                                       jnp.full_like(inst["y"], config.num_classes))[1])
    kappa = per_row(1.0 - 1.0 / inst["omega"], v)
    v_g = keep_target(inst, inst["v_t"] + kappa * (jax.lax.stop_gradient(v) - v_u))
    parts.append(Part(rows=inst, u=u, V=u, v=v, v_g=v_g))
  return tuple(parts)


def imf_loss_terms(parts: Tuple[Part, ...], batch: int, config) -> Tuple[Array, Mapping[str, Array]]:
  """loss = mean_B [w(|V - v_g|^2) + w(|v - v_g|^2)] over the parts' rows, and loss_u, loss_v:
  the unweighted per-element MSEs of V and v against v_g (as the official code logs them).

  Batch means as sums over the parts: concatenating them would move rows between devices.
  """
  p, c = config.adaptive_p, config.adaptive_c
  terms = [(q.V, q.v_g) for q in parts] + [(q.v, q.v_g) for q in parts]
  loss = sum(meanflow.batch_sum_weighted_loss(a, b, p, c) for a, b in terms) / batch
  size = sum(q.V.size for q in parts)
  mse = lambda pairs: sum(jnp.sum(jnp.square(a - b)) for a, b in pairs) / size
  return loss, {"loss": loss, "loss_u": mse(terms[:len(parts)]),
                "loss_v": mse(terms[len(parts):])}


def imf_loss_from_draws(net_fn: NetFn, x: Array, labels: Array, draws: Draws,
                        config) -> Tuple[Array, Mapping[str, Array]]:
  """The iMF loss for data x [B, ...], labels [B] and given draws (any row layout): the
  reference form, every network call on the whole batch (imf_loss_split_from_draws is faster)."""
  z = noisy_sample(x, draws.e, draws.t)
  part = imf_whole_batch(net_fn, z, draws.e - x, labels, draws, config)
  return imf_loss_terms((part,), x.shape[0], config)


def imf_loss_split_from_draws(net_fn: NetFn, x: Array, labels: Array, draws: Draws,
                              config) -> Tuple[Array, Mapping[str, Array]]:
  """imf_loss_from_draws computed per part (imf_split_parts): the same loss and gradient, fewer
  network calls; needs the row layout of sample_draws."""
  z = noisy_sample(x, draws.e, draws.t)
  parts = imf_split_parts(net_fn, z, draws.e - x, labels, draws, config)
  return imf_loss_terms(parts, x.shape[0], config)


def imf_loss(net_fn: NetFn, x: Array, labels: Array, key: Array,
             config) -> Tuple[Array, Mapping[str, Array]]:
  """The whole iMF training loss for a batch x [B, ...], labels [B] (config: default_config())."""
  return imf_loss_split_from_draws(net_fn, x, labels, sample_draws(key, x, config), config)


def sample(net_fn: NetFn, noise: Array, labels: Array, num_steps: int, omega: float,
           t_min: float, t_max: float) -> Array:
  """k-NFE sampling on the u head from noise [B, ...] at t = 1 to data at t = 0.

  z <- z - (t - r) u(z, t, h = t - r, omega, t_min, t_max) on the uniform grid of
  sampling.time_grid; (omega, t_min, t_max) are the network's conditions, chosen here (no
  classifier-free guidance combination at sampling time). Call inside jit.
  """
  b = noise.shape[0]
  cond = [jnp.full((b,), s, noise.dtype) for s in (omega, t_min, t_max)]
  u_fn = lambda z, r, t, y: net_fn(z, t, t - r, *cond, y)[0]
  return sampling.meanflow_steps(u_fn, noise, labels, num_steps)
