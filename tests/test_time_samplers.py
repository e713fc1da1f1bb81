"""The (t, r) samplers against their definitions on 10^5 draws: r <= t, the r != t share, marginals."""
import jax
import numpy as np
import pytest
from scipy import special, stats

from configs import base
from mf_jax import meanflow

N = 100_000


def _config(**kw):
  c = base.meanflow_config(num_classes=0)
  c.update(class_dropout=0.0, **kw)
  return c


def _logit_normal_cdf(x, mu, sigma):
  return stats.norm.cdf((special.logit(np.clip(x, 1e-12, 1 - 1e-12)) - mu) / sigma)


def _draw(config):
  r, t = jax.jit(lambda k: meanflow.sample_times(k, N, config))(jax.random.key(0))
  return np.asarray(r, np.float64), np.asarray(t, np.float64)


def _ks(samples, cdf):
  return stats.kstest(samples, cdf).pvalue


V0 = dict(time_mu=-2.0, time_sigma=2.0, time_mu_r=-2.0, time_sigma_r=2.0, time_pairing="sort",
          r_neq_t_ratio=0.75)
V1 = dict(time_mu=-0.6, time_sigma=1.6, time_mu_r=-4.0, time_sigma_r=1.6, time_pairing="min_r",
          r_neq_t_ratio=0.75)


def test_v0_sorts_two_draws_then_keeps_r_on_the_ratio():
  c = _config(**V0)
  r, t = _draw(c)
  assert np.all(r <= t)
  distinct = r < t
  assert abs(distinct.mean() - 0.75) < 1e-3  # The static pattern: exactly 3 of every 4.
  F = lambda x: _logit_normal_cdf(x, -2.0, 2.0)
  # t = max of two independent draws everywhere; r = min where kept.
  assert _ks(t, lambda x: F(x) ** 2) > 1e-3
  assert _ks(r[distinct], lambda x: 1 - (1 - F(x)) ** 2) > 1e-3


def test_v1_keeps_t_draw_and_clips_r():
  c = _config(**V1)
  r, t = _draw(c)
  assert np.all(r <= t)
  Ft = lambda x: _logit_normal_cdf(x, -0.6, 1.6)
  Fr = lambda x: _logit_normal_cdf(x, -4.0, 1.6)
  assert _ks(t, Ft) > 1e-3  # t's own logit-normal, unsorted.
  # r != t on the kept 75% only where the r draw fell below t: 0.75 * P(r < t).
  p_r_below_t = stats.norm.cdf((-0.6 - -4.0) / np.hypot(1.6, 1.6))  # logits are Gaussian.
  expected_share = 0.75 * p_r_below_t
  share = (r < t).mean()
  assert abs(share - expected_share) < 4 * np.sqrt(expected_share * (1 - expected_share) / N)
  # Where kept, r = min(t, b): P(r <= x) = 1 - (1 - Ft(x)) (1 - Fr(x)).
  kept = np.arange(N) % 4 < 3
  assert _ks(r[kept], lambda x: 1 - (1 - Ft(x)) * (1 - Fr(x))) > 1e-3


def test_default_sampler_unchanged_by_the_new_fields():
  old = _config()  # time_mu_r / time_sigma_r None, pairing "sort": today's shared sampler.
  new = _config(time_mu_r=-0.4, time_sigma_r=1.0)
  for a, b in zip(_draw(old), _draw(new)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kw, field", [
    (dict(time_pairing="v2"), "time_pairing"),
    (dict(time_sigma_r=0.0), "time_sigma_r"),
    (dict(time_sampler="uniform", time_mu_r=-4.0), "time_mu_r"),
])
def test_inconsistent_settings_name_the_field(kw, field):
  with pytest.raises(ValueError, match=field):
    meanflow.validate_config(_config(**kw))
