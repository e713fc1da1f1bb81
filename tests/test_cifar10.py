"""CIFAR-10 reader: clear error when the data is absent; batch structure on TFDS mock data."""
import numpy as np
import pytest
import tensorflow_datasets as tfds

from input_pipeline import cifar10, sampler


def test_missing_data_says_where_to_put_it_and_downloads_nothing(tmp_path):
  with pytest.raises(FileNotFoundError) as err:
    next(cifar10.make_dataset(str(tmp_path), global_batch_size=4, process_index=0, process_count=1))
  msg = str(err.value)
  assert str(tmp_path) in msg and "cifar10" in msg and "download_and_prepare" in msg
  assert list(tmp_path.iterdir()) == []  # no download attempt left anything behind


def test_batch_structure_on_mock_data(tmp_path, monkeypatch):
  # tfds.testing.mock_data serves random examples of the real cifar10 feature spec; the presence
  # check is bypassed because mock data is never "prepared" on disk.
  monkeypatch.setattr(cifar10, "_require_prepared", lambda builder, data_dir: None)
  with tfds.testing.mock_data(num_examples=10):
    split = cifar10.load_split(str(tmp_path))
  # Mock data draws new random labels on every load: serve this one load to both processes.
  monkeypatch.setattr(cifar10, "load_split", lambda data_dir, name: split)
  parts = [cifar10.make_dataset(str(tmp_path), global_batch_size=8, seed=1, start_step=2,
                                process_index=i, process_count=2) for i in range(2)]
  firsts = [next(p) for p in parts]
  b = {k: np.concatenate([f[k] for f in firsts]) for k in firsts[0]}
  assert split["image"].shape == (10, 32, 32, 3) and split["image"].dtype == np.uint8
  # Step 2 of batch 8 over 10 examples: positions 16..23 = epoch 1's 6..9 and epoch 2's 0..3.
  numbers = [sampler.step_indices(2, num_examples=10, global_batch_size=8, seed=1, process_index=i,
                                  process_count=2) for i in range(2)]
  numbers = np.concatenate(numbers)
  np.testing.assert_array_equal(b["x"], split["image"][numbers] / np.float32(127.5) - 1)
  np.testing.assert_array_equal(b["label"], split["label"][numbers])
  assert set(b) == {"x", "x_flip", "label", "index"}
  assert b["x"].shape == (8, 32, 32, 3) and b["x"].dtype == np.float32
  assert b["x"].min() >= -1 and b["x"].max() <= 1
  np.testing.assert_array_equal(b["x_flip"], b["x"][:, :, ::-1])
  assert b["label"].dtype == np.int32 and b["index"].dtype == np.int64
  # Pixels are k/127.5 - 1 for integer k, as uint8 images must give.
  k = (b["x"] + 1) * 127.5
  np.testing.assert_allclose(k, np.round(k), atol=1e-4)


def test_fid_training_set_statistics_end_to_end_on_mock_data(tmp_path, monkeypatch):
  """`python -m eval.fid --write_stats` from the TFDS set: the file holds the images' mu / sigma
  (tests/test_fid.py covers --samples against such a file)."""
  from eval import fid
  monkeypatch.setattr(cifar10, "_require_prepared", lambda builder, data_dir: None)
  stats = str(tmp_path / "cifar10_train.npz")
  with tfds.testing.mock_data(num_examples=40):
    wrote = fid.main(["--images=tfds:cifar10:train", f"--tfds_data_dir={tmp_path}",
                      f"--write_stats={stats}", "--features=pixels", "--batch_size=16"])
    images = np.concatenate(list(cifar10.uint8_image_batches(str(tmp_path), "train", 16)))
  assert wrote["count"] == 40 and wrote["dim"] == 32 * 32 * 3
  assert images.shape == (40, 32, 32, 3) and images.dtype == np.uint8
  with np.load(stats) as data:
    feats = images.reshape(40, -1).astype(np.float64) / 255
    np.testing.assert_allclose(data["mu"], feats.mean(0), atol=1e-6)
    np.testing.assert_allclose(data["sigma"], np.cov(feats, rowvar=False), atol=1e-6)


def test_fid_tfds_images_need_a_data_dir():
  from eval import fid
  with pytest.raises(SystemExit):
    fid.main(["--images=tfds:cifar10", "--write_stats=/tmp/never.npz", "--features=pixels"])
