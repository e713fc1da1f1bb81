"""Latent record reader (exact contents, process sharding, determinism, bad data) and draw_latents."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from input_pipeline import flat_records, latents, records

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


def steps(path, first, count, *, process_count=1, seed=3, batch=8):
  """Example indices of steps first..first+count-1, each process's parts concatenated in order."""
  its = [latents.make_dataset(path, global_batch_size=batch, seed=seed, start_step=first,
                              process_index=i, process_count=process_count)
         for i in range(process_count)]
  return np.stack([np.concatenate([next(it)["index"] for it in its]) for _ in range(count)])


def test_reader_yields_exactly_what_was_written(data):
  path, arrays = data
  got = latents.read_examples(path, np.arange(N)[::-1])
  pos = np.arange(N)[::-1]
  np.testing.assert_array_equal(got["index"], 100 + pos)
  for key, field in (("x", "mean"), ("x_std", "std"), ("x_flip", "flip_mean"),
                     ("x_flip_std", "flip_std")):
    assert got[key].dtype == np.float32 and got[key].shape == (N, *SHAPE)
    np.testing.assert_array_equal(got[key], arrays[field][pos])
  assert got["label"].dtype == np.int32 and got["index"].dtype == np.int64
  np.testing.assert_array_equal(got["label"], arrays["label"][pos])
  assert latents.dataset_info(path) == {"count": N, "num_classes": 10, "shape": SHAPE,
                                        "dtype": "float32", "num_shards": 8}
  batch = next(latents.make_dataset(path, global_batch_size=8, process_index=0, process_count=1))
  np.testing.assert_array_equal(batch["x"], arrays["mean"][batch["index"] - 100])


def test_float16_storage_round_trips(tmp_path):
  arrays = synthetic(n=10)
  records.write_arrays(str(tmp_path), arrays, shard_size=4, dtype="float16")
  got = latents.read_examples(str(tmp_path), np.arange(10))
  np.testing.assert_array_equal(got["x_flip_std"],
                                arrays["flip_std"].astype(np.float16).astype(np.float32))


def test_every_example_once_per_epoch_over_processes_and_a_new_order_each_epoch(data):
  path, _ = data
  drawn = steps(path, 0, N, process_count=3, batch=9).reshape(-1)  # 9 epochs; batches straddle them
  epochs = drawn.reshape(9, N)
  for e in epochs:
    assert sorted(e) == list(range(100, 100 + N))
  assert not np.array_equal(epochs[0], epochs[1])
  assert not np.array_equal(epochs[0], np.sort(epochs[0]))  # actually shuffled
  assert not np.array_equal(steps(path, 0, 5, seed=4), steps(path, 0, 5, seed=3))


def test_resumed_stream_is_the_same_on_any_process_count(data):
  path, _ = data
  straight = steps(path, 0, 12)  # one process from step 0
  np.testing.assert_array_equal(steps(path, 7, 5, process_count=2), straight[7:])  # 1 -> 2
  np.testing.assert_array_equal(steps(path, 4, 8, process_count=4), straight[4:])
  np.testing.assert_array_equal(steps(path, 7, 5), steps(path, 7, 5, process_count=2))  # 2 -> 1
  # Each process reads only its own contiguous part of the global batch.
  part = next(latents.make_dataset(path, global_batch_size=8, seed=3, start_step=7,
                                   process_index=1, process_count=2))["index"]
  np.testing.assert_array_equal(part, straight[7, 4:])
  with pytest.raises(ValueError, match="global_batch_size=8 must be divisible.*3"):
    latents.make_dataset(path, global_batch_size=8, process_index=0, process_count=3)


def corrupt_copy(data, tmp_path):
  out = tmp_path / "copy"
  shutil.copytree(data[0], out)
  return out, sorted(p.name for p in out.glob("*.bin"))


def flip_byte(path, offset):
  with open(path, "r+b") as f:
    f.seek(offset)
    byte = f.read(1)
    f.seek(offset)
    f.write(bytes([byte[0] ^ 0x55]))


def test_truncated_shard_is_named_before_reading(data, tmp_path):
  out, names = corrupt_copy(data, tmp_path)
  stride = flat_records.stride(records.RecordLayout(SHAPE).record_bytes)
  with open(out / names[3], "r+b") as f:
    f.truncate(2 * stride + 50)
  with pytest.raises(ValueError, match=f"{names[3]}.*truncated.*record 2 onwards"):
    latents.make_dataset(str(out), global_batch_size=4, process_index=0, process_count=1)
  shard = records.read_manifest(str(out))["shards"][3]
  shard["bytes"] = 2 * stride + 50  # a manifest that agrees with the size: the record is named
  with pytest.raises(ValueError, match=f"{names[3]}.*truncated.*record 2 onwards"):
    flat_records.open_shard(str(out / names[3]), shard["count"], stride - 8)


def test_corrupt_record_is_named_while_reading(data, tmp_path):
  out, names = corrupt_copy(data, tmp_path)
  stride = flat_records.stride(records.RecordLayout(SHAPE).record_bytes)
  flip_byte(out / names[5], 4 * stride + 40)  # shard 5, record 4 (example 5 * 6 + 4)
  got = latents.read_examples(str(out), [0, 33, 35])  # other records still read
  assert list(got["index"]) == [100, 133, 135]
  with pytest.raises(ValueError, match=f"{names[5]}.*record 4 is corrupt"):
    latents.read_examples(str(out), [0, 34])
  with pytest.raises(ValueError, match=f"{names[5]}.*record 4 is corrupt"):  # the stream, too
    for _ in steps(str(out), 0, 6, batch=9):
      pass


def read_all(path):
  return latents.read_examples(path, np.arange(N))


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
  with pytest.raises(ValueError, match=f"{names[0]}.*do not hold.*latent_shape \\[4, 4, 4\\]"):
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


def test_tfrecord_shards_convert_once_to_the_same_records(tmp_path):
  from input_pipeline import tfrecord_legacy
  arrays = synthetic(n=10)
  tfrecord_legacy.write_arrays(str(tmp_path / "old"), arrays, shard_size=4, num_classes=10)
  assert tfrecord_legacy.main(["--src", str(tmp_path / "old"), "--out", str(tmp_path / "new")]) == 0
  got = latents.read_examples(str(tmp_path / "new"), np.arange(10))
  np.testing.assert_array_equal(got["index"], arrays["index"])
  np.testing.assert_array_equal(got["x_flip"], arrays["flip_mean"])
  m = records.read_manifest(str(tmp_path / "new"))
  assert m["num_classes"] == 10 and m["converted_from"]["format"] == tfrecord_legacy.FORMAT
  # A corrupt old record is named; shards converted before it stay (a rerun resumes after them).
  bad = sorted((tmp_path / "old").glob("*.tfrecord"))[1]
  flip_byte(bad, 100)
  with pytest.raises(ValueError, match=f"{bad.name}.: record 0 is corrupt"):
    tfrecord_legacy.convert(str(tmp_path / "old"), str(tmp_path / "again"))
  assert records.finished_shard(str(tmp_path / "again" / records.shard_name("train", 0, 3)))


def test_batches_without_random_flip_leave_out_the_flipped_view(data):
  """data.random_flip=False: no flipped arrays are read or shipped, and draw_latents gives the same
  latents as from a full batch (it never reads the flipped view then)."""
  path, _ = data
  full = next(latents.make_dataset(path, global_batch_size=8, seed=3, process_index=0,
                                   process_count=1))
  lean = next(latents.make_dataset(path, global_batch_size=8, seed=3, process_index=0,
                                   process_count=1, flip=False))
  assert set(full) - set(lean) == {"x_flip", "x_flip_std"}
  key = jax.random.key(0)
  np.testing.assert_array_equal(latents.draw_latents(lean, key, 0.5, flip=False),
                                latents.draw_latents(full, key, 0.5, flip=False))
