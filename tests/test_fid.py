"""Frechet distance, streaming statistics, Inception Score, statistics files and the FID CLI."""
import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from eval import fid, stats


def _random_rotation(rng, d):
  q, r = np.linalg.qr(rng.normal(size=(d, d)))
  return q * np.sign(np.diag(r))


@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
def test_frechet_zero_for_identical_statistics(method):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(500, 64)) @ rng.normal(size=(64, 64))
  mu, sigma = x.mean(0), np.cov(x, rowvar=False)
  assert abs(stats.frechet_distance(mu, sigma, mu, sigma, method)) < 1e-8 * np.trace(sigma)


@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
def test_frechet_matches_closed_form_for_commuting_covariances(method):
  # Diagonal covariances: FD = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2. A common rotation keeps
  # the covariances commuting, so the same closed form holds for the full (rotated) matrices.
  rng = np.random.default_rng(1)
  d = 48
  a, b = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  truth = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  assert stats.frechet_distance(mu1, np.diag(a), mu2, np.diag(b), method) == pytest.approx(
      truth, rel=1e-9)
  q = _random_rotation(rng, d)
  rotated = stats.frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T, method)
  assert rotated == pytest.approx(truth, rel=1e-7)


def test_frechet_rank_deficient_covariances():
  # Fewer samples than dimensions: S1 = A^T A, S2 = B^T B with A, B [n, D], n < D. The nonzero
  # eigenvalues of S1 S2 are those of (A B^T)(A B^T)^T, so tr sqrt(S1 S2) is the nuclear norm of
  # the small n x n matrix A B^T: an independent route to the truth.
  rng = np.random.default_rng(2)
  n, d = 20, 128
  x1, x2 = rng.normal(size=(n, d)), 0.5 + 1.5 * rng.normal(size=(n, d))
  a = (x1 - x1.mean(0)) / np.sqrt(n - 1)
  b = (x2 - x2.mean(0)) / np.sqrt(n - 1)
  s1, s2 = a.T @ a, b.T @ b
  mu1, mu2 = x1.mean(0), x2.mean(0)
  truth = (np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
           - 2 * np.linalg.svd(a @ b.T, compute_uv=False).sum())
  value = stats.frechet_distance(mu1, s1, mu2, s2, "eigh")
  assert np.isfinite(value) and value == pytest.approx(truth, rel=1e-8)
  # The sqrtm route (with its eps fallback) stays finite and close, if less exact.
  assert stats.frechet_distance(mu1, s1, mu2, s2, "sqrtm") == pytest.approx(truth, rel=1e-3)
  # Fully disjoint supports: tr sqrt(S1 S2) = 0 exactly.
  s1, s2 = np.diag(np.r_[np.ones(d // 2), np.zeros(d // 2)]), np.diag(np.r_[np.zeros(d // 2),
                                                                          2 * np.ones(d // 2)])
  assert stats.frechet_distance(np.zeros(d), s1, np.zeros(d), s2) == pytest.approx(
      np.trace(s1) + np.trace(s2), rel=1e-9)


def test_frechet_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match="same feature function"):
    stats.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_streaming_statistics_uneven_batches_equal_numpy():
  rng = np.random.default_rng(3)
  # A large common offset: a sum / sum-of-squares accumulator would lose digits here.
  x = 1e4 + rng.normal(size=(1003, 16)) @ rng.normal(size=(16, 16))
  acc = stats.StatsAccumulator(16, block_rows=100)  # folds blocks of 258, 500 and 245 rows
  start = 0
  for size in [1, 7, 250, 0, 500, 245]:
    acc.update(x[start:start + size])
    start += size
  assert acc.count == len(x) == start
  np.testing.assert_allclose(acc.mean, x.mean(0), rtol=1e-13)
  np.testing.assert_allclose(acc.cov, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-9)
  # Merging two accumulators (e.g. two hosts) is the same as one stream.
  left = stats.StatsAccumulator(16).update(x[:400])
  merged = left.merge(stats.StatsAccumulator(16).update(x[400:]))
  np.testing.assert_allclose(merged.cov, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-9)
  with pytest.raises(ValueError, match=r"expected \[N, 16\]"):
    acc.update(x[:, :5])


def test_sharded_moments_over_8_devices_equal_numpy():
  devices = jax.devices()
  assert len(devices) == 8
  mesh = Mesh(np.array(devices), ("data",))
  rng = np.random.default_rng(4)
  x = 3.0 + rng.normal(size=(200, 24)) @ rng.normal(size=(24, 24))
  with jax.enable_x64(True):
    # 200 rows = 194 real + 6 padding rows masked out, 25 per device.
    weights = np.r_[np.ones(194), np.zeros(6)]
    sharding = NamedSharding(mesh, P("data"))
    xs = jax.device_put(jnp.asarray(x, jnp.float64), sharding)
    ws = jax.device_put(jnp.asarray(weights, jnp.float64), sharding)
    count, mean, m2 = stats.sharded_moments(xs, mesh, "data", ws)
  assert count == 194
  acc = stats.StatsAccumulator(24).update_moments(count, mean, m2)
  np.testing.assert_allclose(acc.mean, x[:194].mean(0), rtol=1e-12)
  np.testing.assert_allclose(acc.cov, np.cov(x[:194], rowvar=False), rtol=1e-10, atol=1e-10)
  # Several evaluation batches accumulate on the host, and float32 devices stay accurate.
  acc2 = stats.StatsAccumulator(24)
  for chunk in np.split(x, [96, 160]):
    pad = (-len(chunk)) % 8
    xs = jax.device_put(np.r_[chunk, np.zeros((pad, 24))].astype(np.float32), sharding)
    ws = jax.device_put(np.r_[np.ones(len(chunk)), np.zeros(pad)].astype(np.float32), sharding)
    acc2.update_moments(*stats.sharded_moments(xs, mesh, "data", ws))
  assert acc2.count == 200
  np.testing.assert_allclose(acc2.cov, np.cov(x, rowvar=False), rtol=1e-4, atol=1e-4)
  assert stats.merge_across_processes(acc2) is acc2  # single process: unchanged


_TWO_PROCESS_WORKER = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, sys.argv[3])
import jax, numpy as np
jax.config.update("jax_cpu_collectives_implementation", "gloo")
pid = int(sys.argv[1])
jax.distributed.initialize(coordinator_address="127.0.0.1:" + sys.argv[2], num_processes=2,
                           process_id=pid)
from eval import stats
x = 1e3 + np.random.default_rng(0).normal(size=(301, 8))
part = x[:120] if pid == 0 else x[120:]
merged = stats.merge_across_processes(stats.StatsAccumulator(8).update(part))
np.savez(sys.argv[4], count=merged.count, mean=merged.mean, cov=merged.cov)
"""


def test_merge_across_two_processes(tmp_path):
  # Two JAX processes over loopback, each holding part of the features: both end with the
  # statistics of the whole set (float64 travels as a float32 pair, so no precision is lost).
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = str(s.getsockname()[1])
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  procs = [subprocess.Popen([sys.executable, "-c", _TWO_PROCESS_WORKER, str(i), port, root,
                             str(tmp_path / f"out{i}.npz")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT) for i in range(2)]
  logs = [p.communicate(timeout=120)[0].decode() for p in procs]
  assert all(p.returncode == 0 for p in procs), logs
  x = 1e3 + np.random.default_rng(0).normal(size=(301, 8))
  for i in range(2):
    out = np.load(tmp_path / f"out{i}.npz")
    assert int(out["count"]) == 301
    np.testing.assert_allclose(out["mean"], x.mean(0), rtol=1e-14)
    np.testing.assert_allclose(out["cov"], np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)


def test_inception_score_limits():
  k, n = 10, 1000
  # Uniform predictions: p(y|x) = p(y), KL = 0, IS = 1.
  assert stats.inception_score(np.zeros((n, k)))[0] == pytest.approx(1.0, abs=1e-12)
  # Confident, evenly spread predictions: KL = log k in every split, IS = k.
  confident = 50.0 * np.eye(k)[np.arange(n) % k]
  mean, std = stats.inception_score(confident, splits=10)
  assert mean == pytest.approx(k, rel=1e-6) and std < 1e-6
  # Confident but all the same class: IS = 1.
  one_class = 50.0 * np.eye(k)[np.zeros(n, int)]
  assert stats.inception_score(one_class)[0] == pytest.approx(1.0, abs=1e-6)


def test_stats_files_roundtrip_and_adm_reference(tmp_path):
  rng = np.random.default_rng(5)
  mu, sigma = rng.normal(size=8), np.eye(8) * 2
  stats.save_stats(str(tmp_path / "s.npz"), mu, sigma, count=10, feature="pixels")
  got_mu, got_sigma = stats.load_stats(str(tmp_path / "s.npz"))
  np.testing.assert_array_equal(got_mu, mu)
  np.testing.assert_array_equal(got_sigma, sigma)
  # ADM's reference batch: images plus mu / sigma (and spatial statistics we do not use).
  np.savez(tmp_path / "adm.npz", arr_0=np.zeros((2, 4, 4, 3), np.uint8), mu=mu, sigma=sigma,
           mu_s=mu, sigma_s=sigma)
  np.testing.assert_array_equal(stats.load_stats(str(tmp_path / "adm.npz"))[0], mu)
  np.savez(tmp_path / "images_only.npz", arr_0=np.zeros((2, 4, 4, 3), np.uint8))
  with pytest.raises(ValueError, match="no 'mu' and 'sigma'"):
    stats.load_stats(str(tmp_path / "images_only.npz"))
  with pytest.raises(FileNotFoundError, match="write_stats"):
    stats.load_stats(str(tmp_path / "absent.npz"))


def test_npz_streaming_reader_equals_np_load(tmp_path):
  images = np.random.default_rng(6).integers(0, 256, (11, 5, 7, 3), dtype=np.uint8)
  np.savez(tmp_path / "a.npz", arr_0=images, arr_1=np.arange(11))
  np.savez_compressed(tmp_path / "c.npz", arr_0=images)
  for name in ["a.npz", "c.npz"]:
    batches = list(fid.npz_image_batches(str(tmp_path / name), 4))
    assert [len(b) for b in batches] == [4, 4, 3]
    np.testing.assert_array_equal(np.concatenate(batches), images)


def test_cli_pixel_space_fid_matches_direct_computation(tmp_path, capsys):
  rng = np.random.default_rng(7)
  samples = rng.integers(0, 256, (60, 4, 4, 3), dtype=np.uint8)
  ref = np.clip(rng.normal(140, 40, (80, 4, 4, 3)), 0, 255).astype(np.uint8)
  np.savez(tmp_path / "samples.npz", arr_0=samples, arr_1=np.zeros(60, int))
  os.makedirs(tmp_path / "ref_dir")
  from PIL import Image
  for i, img in enumerate(ref):
    Image.fromarray(img).save(tmp_path / "ref_dir" / f"{i:03d}.png")
  fs, fr = samples.reshape(60, -1) / 255.0, ref.reshape(80, -1) / 255.0
  truth = stats.frechet_distance(fs.mean(0), np.cov(fs, rowvar=False), fr.mean(0),
                                 np.cov(fr, rowvar=False))
  # Statistics of a directory written, then FID of an ADM batch against them.
  fid.main([f"--images={tmp_path / 'ref_dir'}", f"--write_stats={tmp_path / 'ref.npz'}",
            "--features=pixels", "--batch_size=32"])
  result = fid.main([f"--samples={tmp_path / 'samples.npz'}", f"--ref={tmp_path / 'ref.npz'}",
                     "--features=pixels", "--batch_size=25"])
  assert result["count"] == 60 and result["fid"] == pytest.approx(truth, rel=1e-6)
  printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert printed["fid"] == pytest.approx(truth, rel=1e-6)
  # A reference given as images is summarised on the fly with the same result.
  again = fid.main([f"--samples={tmp_path / 'samples.npz'}", f"--ref={tmp_path / 'ref_dir'}",
                    "--features=pixels"])
  assert again["fid"] == pytest.approx(truth, rel=1e-6)
  # Statistics of other features are refused.
  with pytest.raises(SystemExit, match="recompute"):
    fid.main([f"--samples={tmp_path / 'samples.npz'}", f"--ref={tmp_path / 'ref.npz'}",
              "--random_inception_weights"])


def test_cli_missing_inputs_and_weights_give_clear_messages(tmp_path):
  np.savez(tmp_path / "s.npz", arr_0=np.zeros((2, 8, 8, 3), np.uint8))
  with pytest.raises(SystemExit, match="--samples"):
    fid.main([f"--samples={tmp_path / 'nope.npz'}", f"--ref={tmp_path / 's.npz'}"])
  with pytest.raises(SystemExit, match="pt_inception-2015-12-05-6726825d.pth"):
    fid.main([f"--samples={tmp_path / 's.npz'}", f"--ref={tmp_path / 's.npz'}",
              f"--inception={tmp_path / 'weights.pth'}"])


def test_cli_inception_statistics_with_random_weights(tmp_path):
  # The CLI's Inception path end to end on a few images (a 2048-d Frechet distance is skipped: its
  # eigendecompositions take ~10 s on a loaded 2-core machine and are tested at lower dimension).
  from eval import inception
  rng = np.random.default_rng(8)
  images = rng.integers(0, 256, (2, 64, 48, 3), dtype=np.uint8)
  np.savez(tmp_path / "s.npz", arr_0=images)
  result = fid.main([f"--images={tmp_path / 's.npz'}", f"--write_stats={tmp_path / 'st.npz'}",
                     "--random_inception_weights", "--batch_size=2"])
  assert result["count"] == 2 and result["dim"] == 2048
  features = inception.InceptionFeatures(
      inception.make_apply_fn("tf1"), inception.random_inception_params(jax.random.key(0)), 2)
  pool, logits = features.pool_and_logits(images)
  mu, sigma = stats.load_stats(str(tmp_path / "st.npz"))
  np.testing.assert_allclose(mu, pool.mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(sigma, np.cov(pool.astype(np.float64), rowvar=False), rtol=1e-4,
                             atol=1e-6)
  assert logits.shape == (2, 1008)
  np.testing.assert_allclose(stats.inception_score(logits, splits=1)[0],
                             inception_score_by_entropies(logits), rtol=1e-10)


def inception_score_by_entropies(logits) -> float:
  """IS = exp(H(p(y)) - mean_x H(p(y|x))), the entropy form of exp(E_x KL(p(y|x) || p(y))), in
  float64 from a plain softmax: an independent route to eval.stats.inception_score (one split)."""
  logits = np.asarray(logits, np.float64)
  p = np.exp(logits - logits.max(axis=1, keepdims=True))
  p /= p.sum(axis=1, keepdims=True)
  entropy = lambda q: -np.sum(np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0), axis=-1)
  return float(np.exp(entropy(p.mean(axis=0)) - entropy(p).mean()))


def test_inception_score_between_the_limits():
  """Two classes predicted 3:1 and 1:3 (uniform marginal): IS = exp(log 2 - H(3/4, 1/4)), a value
  strictly between the limits that test_inception_score_limits checks."""
  mixed = np.log([[0.75, 0.25], [0.25, 0.75]])  # H(marginal) = log 2, H(p(y|x)) = H(3/4, 1/4).
  h = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))
  assert stats.inception_score(mixed, splits=1)[0] == pytest.approx(np.exp(np.log(2) - h), rel=1e-12)
  assert inception_score_by_entropies(mixed) == pytest.approx(np.exp(np.log(2) - h), rel=1e-12)


def test_pixel_features_scaling():
  img = np.full((2, 3, 3, 1), 255, np.uint8)
  np.testing.assert_array_equal(fid.pixel_features(img), np.ones((2, 9), np.float32))
  np.testing.assert_array_equal(fid.pixel_features(img.astype(np.float32) / 510), 0.5)
