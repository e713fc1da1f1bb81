"""Pixel records: prepare_imagenet --pixels -> --verify -> the imagenet_pixels reader, on generated
JPEG/PNG folders; resumption, a truncated shard named in the error, and the RandomResizedCrop."""
import os

import numpy as np
import pytest
from PIL import Image

from input_pipeline import latents, pixels, prepare_imagenet, records

CLASSES = ("n02_dog", "n01_cat")  # sorted order -> labels: cat 0, dog 1
PER_CLASS = 5
SIZE = 16


def make_tree(root, classes=CLASSES, per_class=PER_CLASS, seed=0):
  """Random-sized images, JPEG and PNG mixed, in the image-folder layout prepare_imagenet reads."""
  rng = np.random.RandomState(seed)
  for c in classes:
    os.makedirs(os.path.join(root, c))
    for j in range(per_class):
      h, w = rng.randint(SIZE + 2, 3 * SIZE, 2)
      small = rng.randint(0, 256, (4, 4, 3)).astype(np.uint8)
      ext = ".png" if j % 2 else ".JPEG"
      Image.fromarray(small).resize((int(w), int(h)), Image.BILINEAR).save(
          os.path.join(root, c, f"img_{j:02d}{ext}"))
  return root


def run(src, out, *extra):
  return prepare_imagenet.main(["--pixels", "--src", str(src), "--out", str(out), "--image_size",
                                str(SIZE), "--shard_size", "4", "--batch_size", "4",
                                "--log_every_s", "0", *extra])


def read_all(path, **kw):
  """Every example once (one epoch of the sampler, 2 steps of 5), sorted by index."""
  it = pixels.make_dataset(path, global_batch_size=5, process_index=0, process_count=1, **kw)
  batches = [next(it) for _ in range(2)]
  got = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  order = np.argsort(got["index"])
  return {k: v[order] for k, v in got.items()}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
  return make_tree(str(tmp_path_factory.mktemp("imagenet") / "train"))


@pytest.fixture(scope="module")
def prepared(tree, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("pixels"))
  assert run(tree, out) == 0
  return out


def test_prepare_verify_read_gives_the_centre_crops(tree, prepared):
  m = records.read_manifest(prepared)
  assert m["format"] == records.PIXEL_FORMAT and "vae" not in m
  assert m["image_shape"] == [SIZE, SIZE, 3] and m["dtype"] == "uint8"
  assert m["count"] == 2 * PER_CLASS and len(m["shards"]) == 3
  assert records.verify(prepared)["ok"]
  assert prepare_imagenet.main(["--out", prepared, "--verify"]) == 0

  got = read_all(prepared)
  # Independent truth: the files in sorted (class, name) order, cropped directly with PIL.
  files = [os.path.join(tree, c, f) for c in sorted(CLASSES)
           for f in sorted(os.listdir(os.path.join(tree, c)))]
  want = np.stack([prepare_imagenet.center_crop_adm(Image.open(f), SIZE) for f in files])
  np.testing.assert_array_equal(got["index"], np.arange(len(files)))
  np.testing.assert_array_equal(got["label"], [0] * PER_CLASS + [1] * PER_CLASS)
  assert got["x"].dtype == np.float32
  np.testing.assert_array_equal(got["x"], want.astype(np.float32) / 127.5 - 1.0)


def test_interrupted_then_resumed_equals_uninterrupted(tree, prepared, tmp_path):
  out = tmp_path / "resumed"
  run(tree, out, "--max_shards", "1")
  assert not os.path.exists(out / records.MANIFEST)
  run(tree, out)
  for a, b in zip(records.read_manifest(str(out))["shards"], records.read_manifest(prepared)["shards"]):
    assert a["sha256"] == b["sha256"]
  with pytest.raises(ValueError, match="different settings"):  # A latent run cannot resume it.
    prepare_imagenet.main(["--src", str(tree), "--out", str(out), "--image_size", str(SIZE),
                           "--shard_size", "4", "--vae_random_init_layout", "tiny"])


def test_truncated_shard_is_named_by_verify_and_reader(prepared, tmp_path):
  out = tmp_path / "copy"
  os.makedirs(out)
  for name in os.listdir(prepared):
    with open(os.path.join(prepared, name), "rb") as f:
      data = f.read()
    with open(out / name, "wb") as f:
      f.write(data)
  shard = records.read_manifest(str(out))["shards"][1]["file"]
  with open(out / shard, "r+b") as f:
    f.truncate(100)
  with pytest.raises(ValueError, match=f"(?s)1 of 3 shards.*{shard}.* has 100 bytes"):
    records.verify(str(out))
  with pytest.raises(ValueError, match=f"{shard}.* has 100 bytes"):
    read_all(str(out))


def test_readers_refuse_the_other_format(prepared, tmp_path):
  with pytest.raises(ValueError, match="not latents: read it with data.name='imagenet_pixels'"):
    latents.make_dataset(prepared, global_batch_size=2, process_index=0, process_count=1)
  lat = np.zeros((2, 2, 2, 4), np.float32)
  records.write_arrays(str(tmp_path), dict(mean=lat, std=lat, flip_mean=lat, flip_std=lat,
                                           label=np.zeros(2, np.int64)), shard_size=2)
  with pytest.raises(ValueError, match="not pixels: read it with data.name='imagenet_latents'"):
    pixels.make_dataset(str(tmp_path), global_batch_size=2, process_index=0, process_count=1)


def test_cropped_batches_resume_exactly_on_any_process_count(prepared):
  """Crops are a function of (seed, step, position in the global batch): a run restarted at
  step 3, and two processes' halves, see the uninterrupted single-process batches."""
  kw = dict(global_batch_size=4, seed=7, random_crop_min_area=0.2)
  whole = pixels.make_dataset(prepared, process_index=0, process_count=1, **kw)
  want = [next(whole) for _ in range(5)]
  assert not np.array_equal(want[0]["x"], pixels.read_examples(prepared, want[0]["index"])["x"])
  resumed = pixels.make_dataset(prepared, start_step=3, process_index=0, process_count=1, **kw)
  halves = [pixels.make_dataset(prepared, start_step=3, process_index=i, process_count=2, **kw)
            for i in range(2)]
  for step in (3, 4):
    got = next(resumed)
    parts = [next(h) for h in halves]
    for k in ("x", "label", "index"):
      np.testing.assert_array_equal(got[k], want[step][k])
      np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), want[step][k])


def test_crop_boxes_follow_random_resized_crop():
  boxes = pixels.crop_boxes(np.random.default_rng([3, 4]), 4000, 64, 0.2)
  top, left, h, w = boxes.T
  assert (top >= 0).all() and (left >= 0).all() and (top + h <= 64).all() and (left + w <= 64).all()
  # Area fraction in [0.2, 1] and aspect ratio in [3/4, 4/3], up to rounding each side to pixels.
  area, ratio = h * w / 64**2, w / h
  assert area.min() >= 0.2 * (1 - 2 / np.sqrt(0.2 * 64**2)) and area.max() <= 1
  assert ratio.min() >= 0.75 * (1 - 2 / np.sqrt(0.2 * 64**2)) and ratio.max() <= 4 / 3 * (1 + 0.1)
  assert 0.15 < area.mean() < 0.9 and len({tuple(b) for b in boxes}) > 1000  # Spread, not stuck.
  # Offsets cover every admissible position: the mean offset is half the free space.
  np.testing.assert_allclose(np.mean((top + 0.5) / (64 - h + 1)), 0.5, atol=0.02)
  np.testing.assert_allclose(np.mean((left + 0.5) / (64 - w + 1)), 0.5, atol=0.02)


def test_resized_crop_samples_the_box():
  # A ramp v = 3 * column: bicubic (Keys, a = -0.5) reproduces linear functions, so away from the border
  # output column j holds the ramp at the box's source coordinate left + (j + 0.5) w / S - 0.5.
  s = 32
  ramp = np.broadcast_to(3 * np.arange(s, dtype=np.uint8)[None, :, None], (s, s, 3)).copy()
  boxes = np.array([[0, 0, s, s], [4, 6, 16, 20]], np.int32)
  out = pixels.resized_crops(np.stack([ramp, ramp]), boxes)
  np.testing.assert_array_equal(out[0], ramp)  # The whole image is left as it is.
  j = np.arange(4, s - 4)
  want = np.round(3 * (6 + (j + 0.5) * 20 / s - 0.5))
  np.testing.assert_array_equal(out[1][:, j, 0], np.broadcast_to(want, (s, len(j))))


def test_the_config_sets_the_resolution(tree, tmp_path):
  """--config=configs/imagenet_pmf.py:B/32 writes 512 x 512 crops (its data.image_size); a
  latent config without --pixels, a pixel config without it, and a clashing --image_size are
  refused before anything is written."""
  args = ["--src", str(tree), "--shard_size", "8", "--log_every_s", "0", "--limit", "2"]
  out = tmp_path / "p512"
  assert prepare_imagenet.main(["--pixels", "--config", "configs/imagenet_pmf.py:B/32",
                                "--out", str(out), *args]) == 0
  m = records.read_manifest(str(out))
  assert m["image_shape"] == [512, 512, 3] and m["count"] == 2
  for bad, message in (
      (["--config", "configs/imagenet_pmf.py:B/32"], "add --pixels"),
      (["--pixels", "--config", "configs/imagenet_pmf.py:B/16", "--image_size", "512"],
       "trains at data.image_size=256"),
      (["--pixels", "--config", "configs/imagenet_imf.py:B/2"], "drop --pixels")):
    with pytest.raises(ValueError, match=message):
      prepare_imagenet.main([*bad, "--out", str(tmp_path / "bad"), *args])
    assert not os.path.exists(tmp_path / "bad")
