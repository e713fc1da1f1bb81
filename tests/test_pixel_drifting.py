"""A tiny pixel-space drifting run: prepare_imagenet --pixels -> the real trainer (random crops,
flips, class queues, a small generator on 16 x 16 x 3 pixels) -> sample grid and Frechet distance,
without a VAE; the same config on latent data asks for one.

The generator is an MLP: the drifting step compiles in half the time of a DiT's, and the pixel
path (data, augmentation, decoding switch) is the same for either; the B/16 DiT of the shipped
config is checked by the config checks (patch 16 divides 256)."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from configs import imagenet_drift_pixel_b16
from eval import fid, stats
from input_pipeline import prepare_imagenet
from mf_jax import config_checks, train, train_state

SIZE, CLASSES, PER_CLASS = 16, 2, 8


@pytest.fixture(scope="module")
def pixel_data(tmp_path_factory):
  """(records dir, reference pixel statistics .npz) of 2 classes of smooth random images."""
  root = tmp_path_factory.mktemp("pixel_run")
  rng = np.random.RandomState(0)
  for c in range(CLASSES):
    os.makedirs(root / "train" / f"class_{c}")
    for j in range(PER_CLASS):
      small = (rng.randint(0, 128, (3, 3, 3)) + 127 * c).astype(np.uint8)  # Classes differ.
      Image.fromarray(small).resize((SIZE + 4, SIZE), Image.BILINEAR).save(
          root / "train" / f"class_{c}" / f"{j}.png")
  out = str(root / "records")
  assert prepare_imagenet.main(["--pixels", "--src", str(root / "train"), "--out", out,
                                "--image_size", str(SIZE), "--shard_size", "4",
                                "--log_every_s", "0"]) == 0
  images = np.stack([prepare_imagenet.center_crop_adm(Image.open(root / "train" / c / f), SIZE)
                     for c in sorted(os.listdir(root / "train"))
                     for f in sorted(os.listdir(root / "train" / c))])
  ref = str(root / "ref_pixels.npz")
  stats.save_stats(ref, *stats.stats_from_features(fid.pixel_features(images)))
  return out, ref


def tiny_pixel_config(path, ref_stats):
  """The shipped B/16 pixel config, shrunk: same data set, augmentation and loss, no encoder."""
  config = imagenet_drift_pixel_b16.get_config()
  config.data.update(path=path, image_size=SIZE, num_classes=CLASSES)
  config.model.update(name="mlp", mlp_widths=(64, 64), compute_dtype="float32", remat=False)
  config.drifting.update(classes_per_step=CLASSES, num_pos=4, num_neg=4, num_unc=2, queue_len=8,
                         uncond_queue_len=8, temperatures=(0.05, 0.2))
  config.optim.update(learning_rate=1e-3, warmup_steps=0)
  config.train.update(global_batch_size=8, num_steps=2, log_every=1, checkpoint_every=100,
                      sample_every=2)
  config.sample.update(num_samples=8, batch_size=8)
  config.eval.update(every_steps=2, features="pixels", ref_stats=ref_stats, num_samples=16,
                     batch_size=8, num_steps=(1,), cfg_scales=())
  return config


def test_tiny_pixel_drifting_trains_samples_and_scores_without_a_vae(pixel_data, tmp_path):
  config = tiny_pixel_config(*pixel_data)
  assert config.data.random_crop_min_area > 0 and config.data.random_flip  # Release augmentation.
  workdir = str(tmp_path / "run")
  state = train.train_and_evaluate(config, workdir)
  assert int(state.step) == 2
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  losses = [r["loss"] for r in rows if "loss" in r]
  scores = [r["fd_pixels_1nfe"] for r in rows if "fd_pixels_1nfe" in r]
  assert len(losses) == 2 and all(np.isfinite(losses))
  assert len(scores) == 1 and np.isfinite(scores[0]) and scores[0] > 0
  # The sample grid (8 samples in a row): generator pixels as they are, no decoding.
  grid = np.asarray(Image.open(os.path.join(workdir, "samples", "step_00000002_1nfe.png")))
  assert grid.shape == (SIZE + 2, 8 * (SIZE + 1) + 1, 3)
  tiles = [grid[1:1 + SIZE, 1 + k * (SIZE + 1):1 + k * (SIZE + 1) + SIZE] for k in range(8)]
  assert min(t.std() for t in tiles) > 0  # Images, not the white fill of a skipped grid.

  latent = tiny_pixel_config(*pixel_data)
  latent.data.name = "imagenet_latents"
  with pytest.raises(ValueError, match=r"data\.name='imagenet_latents'\) needs data\.vae_path"):
    config_checks.validate(latent)
  config.data.image_size = SIZE + 1  # Records of another size: named before anything compiles.
  with pytest.raises(ValueError, match=r"data\.image_size=17, data\.channels=3 .* holds \[16, 16, "
                                       r"3\]"):
    config_checks.validate(config)
  config.data.image_size = SIZE
  config.data.vae_path = workdir  # An existing path, but nothing to decode.
  with pytest.raises(ValueError, match=r"data\.vae_path=.* is sampled in pixel space"):
    config_checks.validate(config)


@pytest.mark.parametrize("name,dims", [("imagenet_drift_pixel_b16", (12, 768, 12, 16)),
                                       ("imagenet_drift_pixel_l16", (24, 1024, 16, 16))])
def test_shipped_pixel_configs_pass_the_checks_without_a_vae(name, dims):
  config = __import__(f"configs.{name}", fromlist=["get_config"]).get_config()
  config.eval.every_steps = 0  # Scoring needs Inception weights and ADM statistics, not a VAE.
  assert config.data.name == "imagenet_pixels" and config.data.vae_path == ""
  config_checks.validate(config, mode="sample")  # (Training also checks the records' shape.)
  model = train_state.build_model(config)
  assert model.dims() == dims and (config.data.image_size, config.data.channels) == (256, 3)
