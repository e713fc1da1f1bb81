"""End to end: a small MLP drifting generator learns a 2-D mixture of eight Gaussians.

Scale of the energy distance (n = 2000 samples each, this mixture): two independent data samples
score about 0.005-0.007 (mode counts fluctuate); a perfect sampler that drops one of the eight modes
scores about 0.033; the untrained generator (all points near one spot) scores about 1. The trained
generator must land within 3x of the data-vs-data value and give every mode between half and twice
its share of 1/8, i.e. cover all modes with about the right mass. (After 1000 steps of 256 + 256
samples it measured 0.0110-0.0164 over seeds 0-5, mode shares 0.099-0.147, against 0.0073 for
data; after 2000 steps 0.0034-0.0154 over seeds 0-3, so the extra steps bought no margin. The
within-mode spread is still wider than the data's 0.1, which a smooth MLP sharpens only slowly.)
"""
import jax
import numpy as np

from mf_jax import drifting
from mf_jax.distances import energy_distance
from scripts import drifting_toy


def test_mlp_generator_matches_gaussian_mixture():
  n = 2000
  model, params, _ = drifting_toy.train(data="gaussians", steps=1000, batch=256, seed=0)
  data = np.asarray(drifting_toy.gaussian_mixture(jax.random.key(100), n))
  other = np.asarray(drifting_toy.gaussian_mixture(jax.random.key(200), n))
  generated = drifting_toy.sample(model, params, jax.random.key(300), n)

  ed_data = energy_distance(other, data)
  ed_generated = energy_distance(generated, data)
  assert ed_generated < 3 * ed_data, (ed_generated, ed_data)
  mode = np.round(np.arctan2(generated[:, 1], generated[:, 0]) / (np.pi / 4)).astype(int) % 8
  share = np.bincount(mode, minlength=8) / n
  assert np.all((share > 1 / 16) & (share < 1 / 4)), share
