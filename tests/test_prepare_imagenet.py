"""prepare_imagenet end to end on generated JPEG folders with a random-weight tiny VAE."""
import json
import os
import shutil

import jax
import numpy as np
import pytest
from PIL import Image

from input_pipeline import latents, prepare_imagenet, records
from mf_jax.models import vae

CLASSES = ("n02_dog", "n01_cat", "n03_fox")  # sorted order -> labels: cat 0, dog 1, fox 2
PER_CLASS = 9
SIZE = 32


def make_tree(root, classes=CLASSES, per_class=PER_CLASS, seed=0):
  rng = np.random.RandomState(seed)
  for c in classes:
    os.makedirs(os.path.join(root, c))
    for j in range(per_class):
      h, w = rng.randint(36, 100, 2)
      # Smooth random images, so JPEG keeps them recognisable.
      small = rng.randint(0, 256, (4, 4, 3)).astype(np.uint8)
      Image.fromarray(small).resize((int(w), int(h)), Image.BILINEAR).save(
          os.path.join(root, c, f"img_{j:02d}.JPEG"), quality=95)
  return root


def run(src, out, *extra):
  return prepare_imagenet.main(["--src", str(src), "--out", str(out), "--vae_random_init_layout",
                                "tiny", "--image_size", str(SIZE), "--shard_size", "8",
                                "--batch_size", "8", "--log_every_s", "0", *extra])


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
  return make_tree(str(tmp_path_factory.mktemp("imagenet") / "train"))


@pytest.fixture(scope="module")
def prepared(tree, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("latents"))
  run(tree, out)
  return out


def test_center_crop_follows_adm_rule():
  # 1030 x 700 -> BOX halve once (700 >= 512) to 515 x 350 -> BICUBIC to 377 x 256 -> crop x 60.
  rng = np.random.RandomState(0)
  image = Image.fromarray(rng.randint(0, 256, (700, 1030, 3)).astype(np.uint8))
  want = np.asarray(image.resize((515, 350), Image.BOX).resize((377, 256), Image.BICUBIC))
  np.testing.assert_array_equal(prepare_imagenet.center_crop_adm(image, 256), want[:, 60:316])
  # Min side already == size: only the crop.
  arr = rng.randint(0, 256, (32, 50, 3)).astype(np.uint8)
  np.testing.assert_array_equal(prepare_imagenet.center_crop_adm(Image.fromarray(arr), 32),
                                arr[:, 9:41])


def test_records_hold_the_vae_moments_of_each_image_and_its_flip(tree, prepared):
  m = records.read_manifest(prepared)
  assert m["count"] == len(CLASSES) * PER_CLASS and m["num_classes"] == 3
  assert m["latent_shape"] == [SIZE // 2, SIZE // 2, 4] and m["dtype"] == "float32"
  assert m["classes"] == sorted(CLASSES) and len(m["shards"]) == 4
  for s in m["shards"]:
    assert s["sha256"] == records.file_sha256(os.path.join(prepared, s["file"]))
  got = latents.read_examples(prepared, np.arange(m["count"]))
  np.testing.assert_array_equal(got["index"], np.arange(m["count"]))
  # Independent truth: files in sorted order, encoded directly (unsharded) with the same weights.
  files = [os.path.join(tree, c, f) for c in sorted(CLASSES)
           for f in sorted(os.listdir(os.path.join(tree, c)))]
  want_labels = [sorted(CLASSES).index(os.path.basename(os.path.dirname(f))) for f in files]
  np.testing.assert_array_equal(got["label"], want_labels)
  images = np.stack([prepare_imagenet.center_crop_adm(Image.open(f), SIZE) for f in files])
  x = images.astype(np.float32) / 127.5 - 1
  cfg = vae.LAYOUTS["tiny"]
  params = vae.random_params(cfg, 0)
  encode = jax.jit(lambda x: vae.encode_moments(cfg, params, x))
  mean, std = encode(x)
  fmean, fstd = encode(x[:, :, ::-1].copy())
  for key, want in (("x", mean), ("x_std", std), ("x_flip", fmean), ("x_flip_std", fstd)):
    np.testing.assert_allclose(got[key], np.asarray(want), rtol=0, atol=2e-5, err_msg=key)
  assert not np.allclose(got["x"], got["x_flip"])  # the flip really is a different image
  assert records.verify(prepared)["ok"]


def test_manifest_stores_the_per_channel_statistics_of_the_posterior_samples(prepared, tmp_path):
  got = latents.latent_statistics(prepared)
  rows = latents.read_examples(prepared, np.arange(len(CLASSES) * PER_CLASS))
  mu = rows["x"].astype(np.float64).reshape(-1, 4)
  sd = rows["x_std"].astype(np.float64).reshape(-1, 4)
  # Law of total variance with numpy's two-pass variance: Var z = Var(mean) + E[std^2].
  np.testing.assert_allclose(got["mean"], mu.mean(0), rtol=1e-12)
  np.testing.assert_allclose(got["std"], np.sqrt(mu.var(0) + (sd ** 2).mean(0)), rtol=1e-10)
  np.testing.assert_allclose(got["std_of_posterior_means"], mu.std(0), rtol=1e-10)
  # And by sampling: 256 posterior draws per record, within 5 standard errors.
  z = mu + sd * np.random.RandomState(0).normal(size=(256,) + mu.shape)
  z = z.reshape(-1, 4)
  standard_error = float(z.std(0).max()) / np.sqrt(len(z) / 256)  # draws of a record correlate
  np.testing.assert_allclose(got["mean"], z.mean(0), atol=5 * standard_error)
  assert np.all(np.abs(np.array(got["std"]) - z.std(0)) < 0.05 * z.std(0))
  # A manifest without them (an older preparation) is a clear error naming the fix.
  out = tmp_path / "old"
  shutil.copytree(prepared, out)
  m = json.load(open(out / records.MANIFEST))
  del m["latent_statistics"]
  records.atomic_write_json(str(out / records.MANIFEST), m)
  with pytest.raises(ValueError, match="manifest.json.*no latent_statistics.*rerun prepare_imagenet"):
    latents.latent_statistics(str(out))


def test_interrupted_then_resumed_equals_uninterrupted(tree, prepared, tmp_path):
  out = tmp_path / "resumed"
  run(tree, out, "--max_shards", "1")
  assert not (out / records.MANIFEST).exists()  # no manifest until every shard exists
  assert len(list(out.glob("*.bin"))) == 1
  run(tree, out, "--max_shards", "1")
  # A crash after the rename but before the done marker: the shard must be rewritten.
  second = sorted(out.glob("*.bin"))[1]
  os.remove(str(second) + ".done.json")
  with open(second, "r+b") as f:
    f.truncate(100)
  (out / "train-00003-of-00004.bin.tmp-999").write_bytes(b"partial")  # stale temp file
  run(tree, out)
  full = json.load(open(os.path.join(prepared, records.MANIFEST)))
  resumed = json.load(open(out / records.MANIFEST))
  assert resumed["shards"] == full["shards"]  # same files, counts and sha256
  assert records.verify(str(out))["ok"]


def test_two_tasks_sharing_an_output_equal_one_run(tree, prepared, tmp_path):
  out = tmp_path / "tasks"
  run(tree, out, "--num_tasks", "2", "--task_index", "1")
  assert not (out / records.MANIFEST).exists()
  assert sorted(p.name for p in out.glob("*.bin")) == [
      "train-00001-of-00004.bin", "train-00003-of-00004.bin"]
  run(tree, out, "--num_tasks", "2", "--task_index", "0")  # the last task writes the manifest
  full = json.load(open(os.path.join(prepared, records.MANIFEST)))
  tasks = json.load(open(out / records.MANIFEST))
  assert tasks["shards"] == full["shards"]
  assert tasks["latent_statistics"] == full["latent_statistics"]  # over every task's shards


def test_resume_with_other_settings_is_refused(tree, prepared, tmp_path):
  out = tmp_path / "copy"
  shutil.copytree(prepared, out)
  with pytest.raises(ValueError, match="different settings.*shard_size"):
    prepare_imagenet.main(["--src", tree, "--out", str(out), "--vae_random_init_layout", "tiny",
                           "--image_size", str(SIZE), "--shard_size", "5"])


def test_verify_names_truncated_and_altered_shards(prepared, tmp_path):
  out = tmp_path / "bad"
  shutil.copytree(prepared, out)
  names = sorted(p.name for p in out.glob("*.bin"))
  with open(out / names[1], "r+b") as f:
    f.truncate(os.path.getsize(out / names[1]) - 10)
  with open(out / names[2], "r+b") as f:  # same size, one byte changed
    f.seek(500)
    byte = f.read(1)
    f.seek(500)
    f.write(bytes([byte[0] ^ 0xFF]))
  with pytest.raises(ValueError) as err:
    prepare_imagenet.main(["--out", str(out), "--verify"])
  msg = str(err.value)
  assert "2 of 4 shards" in msg and names[1] in msg and "truncated" in msg
  assert names[2] in msg and "sha256" in msg and names[0] not in msg


def test_repair_rewrites_a_shard_altered_at_the_same_size(tree, prepared, tmp_path):
  out = tmp_path / "repair"
  shutil.copytree(prepared, out)
  name = sorted(p.name for p in out.glob("*.bin"))[2]
  with open(out / name, "r+b") as f:
    f.seek(500)
    byte = f.read(1)
    f.seek(500)
    f.write(bytes([byte[0] ^ 0xFF]))
  with pytest.raises(ValueError, match=f"(?s){name}.*sha256.*--repair"):
    records.verify(str(out))
  run(tree, out, "--repair")
  assert records.verify(str(out))["ok"]
  full = json.load(open(os.path.join(prepared, records.MANIFEST)))
  assert json.load(open(out / records.MANIFEST))["shards"] == full["shards"]


def test_bad_sources_give_errors_naming_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere.*not a directory"):
    run(tmp_path / "nowhere", tmp_path / "out")
  os.makedirs(tmp_path / "empty" / "n01_cat")
  with pytest.raises(ValueError, match="empty.*empty split"):
    run(tmp_path / "empty", tmp_path / "out")
  (tmp_path / "broken" / "n01").mkdir(parents=True)
  (tmp_path / "broken" / "n01" / "x.JPEG").write_bytes(b"not a jpeg")
  with pytest.raises(ValueError, match="x.JPEG"):
    run(tmp_path / "broken", tmp_path / "out2")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    prepare_imagenet.main(["--src", str(tmp_path / "broken"), "--out", str(tmp_path / "o3"),
                           "--vae", str(tmp_path / "no_vae")])
  with pytest.raises(FileNotFoundError, match="imagenet2012 is not prepared.*nothing is downloaded"):
    prepare_imagenet.main(["--tfds_data_dir", str(tmp_path / "tfds"), "--out", str(tmp_path / "o5"),
                           "--vae_random_init_layout", "tiny"])
  with pytest.raises(ValueError, match="multiple of the VAE downsampling"):
    run(make_tree(str(tmp_path / "ok"), per_class=1), tmp_path / "o4", "--image_size", "33")
