"""Latent record reader (exact contents, process sharding, determinism, bad data) and draw_latents."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from input_pipeline import latents, records

N, SHAPE = 45, (4, 4, 2)


def synthetic(n=N, shape=SHAPE, seed=0):
  rng = np.random.RandomState(seed)
  arrays = {f: rng.normal(size=(n, *shape)).astype(np.float32) for f in records.LATENT_FIELDS}
  arrays["label"] = rng.randint(0, 10, n)
  arrays["index"] = np.arange(100, 100 + n)
  return arrays


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("lat"))
  arrays = synthetic()
  records.write_arrays(out, arrays, shard_size=6, num_classes=10)  # 8 shards, last has 3
  return out, arrays


def read_all(path, **kw):
  kw = {"batch_size": 4, "shuffle": False, "repeat": False, "process_index": 0,
        "process_count": 1, **kw}
  batches = list(latents.make_dataset(path, **kw))
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}, batches


def test_reader_yields_exactly_what_was_written(data):
  path, arrays = data
  got, batches = read_all(path)
  assert [len(b["label"]) for b in batches][-1] == N % 4  # no repeat: remainder kept
  pos = got["index"] - 100
  assert sorted(pos) == list(range(N))
  for key, field in (("x", "mean"), ("x_std", "std"), ("x_flip", "flip_mean"),
                     ("x_flip_std", "flip_std")):
    assert got[key].dtype == np.float32 and got[key].shape == (N, *SHAPE)
    np.testing.assert_array_equal(got[key], arrays[field][pos])
  assert got["label"].dtype == np.int32 and got["index"].dtype == np.int64
  np.testing.assert_array_equal(got["label"], arrays["label"][pos])
  assert latents.dataset_info(path) == {"count": N, "num_classes": 10, "shape": SHAPE,
                                        "dtype": "float32", "num_shards": 8}


def test_float16_storage_round_trips(tmp_path):
  arrays = synthetic(n=10)
  records.write_arrays(str(tmp_path), arrays, shard_size=4, dtype="float16")
  got, _ = read_all(str(tmp_path))
  pos = got["index"] - 100
  np.testing.assert_array_equal(got["x_flip_std"],
                                arrays["flip_std"][pos].astype(np.float16).astype(np.float32))


def test_two_processes_read_each_record_once_per_epoch(data):
  path, _ = data
  seen = [read_all(path, process_index=i, process_count=2, shuffle=True, seed=3)[0]["index"]
          for i in range(2)]
  assert not set(seen[0]) & set(seen[1])
  assert sorted(np.concatenate(seen)) == list(range(100, 100 + N))
  with pytest.raises(ValueError, match="fewer than process_count=9"):
    read_all(path, process_index=0, process_count=9)


def test_shuffle_is_deterministic_under_a_seed_and_repeats(data):
  path, _ = data

  def first(seed, k=20):
    it = latents.make_dataset(path, batch_size=8, seed=seed, process_index=0, process_count=1)
    return np.concatenate([next(it)["index"] for _ in range(k)])
  a, b, c = first(1), first(1), first(2)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert not np.array_equal(a[:N], np.sort(a[:N]))  # actually shuffled
  # 20 full batches of 8 = 160 > 3 epochs: exact epochs, each in a new order; batches stay full.
  epochs = [a[e * N:(e + 1) * N] for e in range(3)]
  for e in epochs:
    assert sorted(e) == list(range(100, 100 + N))
  assert not np.array_equal(epochs[0], epochs[1]) and len(a) == 160


def corrupt_copy(data, tmp_path):
  out = tmp_path / "copy"
  shutil.copytree(data[0], out)
  return out, sorted(p.name for p in out.glob("*.tfrecord"))


def test_truncated_shard_is_named_before_reading(data, tmp_path):
  out, names = corrupt_copy(data, tmp_path)
  with open(out / names[3], "r+b") as f:
    f.truncate(50)
  with pytest.raises(ValueError, match=f"{names[3]}.*truncated"):
    read_all(str(out))


def test_corrupt_record_is_named_while_reading(data, tmp_path):
  out, names = corrupt_copy(data, tmp_path)
  with open(out / names[5], "r+b") as f:  # flip a payload byte: the record CRC fails
    f.seek(40)
    byte = f.read(1)
    f.seek(40)
    f.write(bytes([byte[0] ^ 0x55]))
  with pytest.raises(ValueError, match=f"{names[5]}.*corrupt"):
    read_all(str(out))


def test_manifest_shape_or_dtype_disagreeing_with_shards(data, tmp_path):
  out, names = corrupt_copy(data, tmp_path)
  manifest = json.loads((out / records.MANIFEST).read_text())
  # Inconsistent manifest itself: named as the manifest.
  (out / records.MANIFEST).write_text(json.dumps({**manifest, "dtype": "float16"}))
  with pytest.raises(ValueError, match="manifest.json.*record_bytes"):
    read_all(str(out))
  # Self-consistent manifest whose shape does not match the shards: named as the shard.
  other = records.RecordLayout((4, 4, 4), "float32").to_json()
  (out / records.MANIFEST).write_text(json.dumps({**manifest, **other}))
  with pytest.raises(ValueError, match=f"{names[0]}.*records of {manifest['record_bytes']} bytes"):
    read_all(str(out))
  other = records.RecordLayout(SHAPE, "float16").to_json()
  (out / records.MANIFEST).write_text(json.dumps({**manifest, **other}))
  with pytest.raises(ValueError, match=f"{names[0]}.*dtype float16"):
    read_all(str(out))


def test_missing_data_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="manifest.json.*prepare_imagenet"):
    read_all(str(tmp_path))


draw = jax.jit(latents.draw_latents)  # scale traced: one compile per shape


def batch_of(mean, std, flip_mean, flip_std):
  return {"x": mean, "x_std": std, "x_flip": flip_mean, "x_flip_std": flip_std}


def test_draw_latents_zero_std_picks_mean_or_flip_per_sample():
  b, scale = 4000, 0.18215
  mean = np.ones((b, 2, 2, 1), np.float32) * np.arange(b, dtype=np.float32)[:, None, None, None]
  flip_mean = -mean - 1.0
  zero = np.zeros_like(mean)
  x = draw(batch_of(mean, zero, flip_mean, zero), jax.random.key(0), scale)
  is_orig = np.all(np.isclose(x, scale * mean), axis=(1, 2, 3))
  is_flip = np.all(np.isclose(x, scale * flip_mean), axis=(1, 2, 3))
  assert np.all(is_orig ^ is_flip)  # whole samples, never mixed within a sample
  assert abs(is_flip.mean() - 0.5) < 4 * 0.5 / np.sqrt(b)  # fair coin, 4 sigma


def test_draw_latents_samples_the_posterior_of_the_chosen_view():
  b, scale = 2000, 0.18215
  shape = (b, 4, 4, 4)
  zeros, ones = np.zeros(shape, np.float32), np.ones(shape, np.float32)
  x = draw(batch_of(zeros, ones, zeros, ones), jax.random.key(1), scale)
  x, n = np.asarray(x), x.size
  assert abs(x.mean()) < 4 * scale / np.sqrt(n)
  assert abs(x.std() / scale - 1) < 4 * np.sqrt(0.5 / n)
  # Posterior std of the flip differs (3): the per-sample std tells which view was drawn.
  x = draw(batch_of(zeros, ones, zeros, 3 * ones), jax.random.key(2), 1.0)
  per_sample = np.asarray(x).std(axis=(1, 2, 3))
  assert np.all((np.abs(per_sample - 1) < 0.5) | (np.abs(per_sample - 3) < 1.5))
  assert 0.4 < np.mean(per_sample > 2) < 0.6
  # Different keys draw different noise; the same key the same.
  same = batch_of(ones, ones, ones, ones)
  a = draw(same, jax.random.key(3), 1.0)
  assert np.array_equal(a, draw(same, jax.random.key(3), 1.0))
  assert not np.array_equal(a, draw(same, jax.random.key(4), 1.0))


def test_draw_latents_passes_pixel_batches_through():
  pixels = {"x": jnp.linspace(-1, 1, 48).reshape(1, 4, 4, 3), "x_flip": jnp.zeros((1, 4, 4, 3)),
            "label": jnp.zeros(1, jnp.int32)}
  assert latents.draw_latents(pixels, jax.random.key(0), 0.18215) is pixels["x"]
