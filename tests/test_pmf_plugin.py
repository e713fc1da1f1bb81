"""pMF through the trainer: a tiny pixel run reads its frozen ConvNeXt from its weights file at
step 0 (prepare_imagenet --pixels records, 16 x 16 x 3, crops of 32), trains the perceptual term
and samples; both frozen networks' declarations load their files as the trainer's loader does;
the checks name the pMF fields a user gets wrong; the ImageNet configs pass the checks.

LPIPS is the full VGG16 trunk (the module has no size fields), ConvNeXt a tiny random one; their
values are random: this tests the wiring, tests/test_lpips.py and tests/test_pmf_golden.py test
the numbers (the LPIPS term's path through the loss is the ConvNeXt term's, and the golden file's
loss has both). The trainer run leaves LPIPS out: compiling VGG16 into the 8-device step would
add ~12 s and check no more wiring."""
import json
import os

import jax
import numpy as np
import pytest
from flax import traverse_util
from PIL import Image

from configs import imagenet_pmf, pmf_digits
from input_pipeline import prepare_imagenet
from mf_jax import config_checks, generate, sharding, train, train_state
from mf_jax.convert.formats import convnext as convnext_format
from mf_jax.convert.formats import lpips_vgg16
from mf_jax.errors import ConfigError
from mf_jax.models import convnext, lpips
from mf_jax.objectives import pmf as pmf_objective

SIZE, CLASSES, PER_CLASS, CROP = 16, 2, 8, 32
CONVNEXT_DEPTHS, CONVNEXT_DIMS = (1, 1, 1, 1), (8, 8, 8, 8)


def _random_file(module, example, save, path, rng, scale):
  """Random weights; LPIPS's linear layers non-negative, as trained ones are (a distance)."""
  def draw(path, a):
    w = scale * rng.normal(size=a.shape)
    return (np.abs(w) if path[-2].key.startswith("lin") else w).astype(np.float32)
  variables = jax.tree_util.tree_map_with_path(
      draw, jax.eval_shape(module.init, jax.random.key(0), *example))
  save(path, variables)
  return path


@pytest.fixture(scope="module")
def pixel_run(tmp_path_factory):
  """(config, final state, metrics rows) of a 2-step pMF run with both perceptual terms."""
  root = tmp_path_factory.mktemp("pmf_pixels")
  rng = np.random.RandomState(0)
  for c in range(CLASSES):
    os.makedirs(root / "train" / f"class_{c}")
    for j in range(PER_CLASS):
      small = (rng.randint(0, 128, (3, 3, 3)) + 127 * c).astype(np.uint8)
      Image.fromarray(small).resize((SIZE, SIZE), Image.BILINEAR).save(
          root / "train" / f"class_{c}" / f"{j}.png")
  records = str(root / "records")
  assert prepare_imagenet.main(["--pixels", "--src", str(root / "train"), "--out", records,
                                "--image_size", str(SIZE), "--shard_size", "8",
                                "--log_every_s", "0"]) == 0
  crop = np.zeros((1, CROP, CROP, 3), np.float32)
  lpips_path = _random_file(lpips.LPIPS(), (crop, crop), lpips_vgg16.save_variables,
                            str(root / "lpips.npz"), rng, 0.05)
  convnext_path = _random_file(convnext.ConvNeXtV2(CONVNEXT_DEPTHS, CONVNEXT_DIMS),
                               (convnext.example_input(),), convnext_format.save_variables,
                               str(root / "convnext.npz"), rng, 0.3)
  config = imagenet_pmf.get_config("B/16")
  config.data.update(path=records, image_size=SIZE, num_classes=CLASSES)
  config.model.update(variant="B/4", depth=2, hidden_size=32, num_heads=2, head_depth=1)
  config.pmf.update(noise_scale=2.0, crop_size=CROP, perceptual_max_t=0.95, lpips_path=lpips_path,
                    convnext_path=convnext_path, convnext_depths=CONVNEXT_DEPTHS,
                    convnext_dims=CONVNEXT_DIMS)
  both = config.copy_and_resolve_references()
  config.pmf.lpips_weight = 0.0
  config.train.update(global_batch_size=8, num_steps=2, log_every=1, checkpoint_every=100,
                      sample_every=0)
  config.sample.update(num_samples=8, batch_size=8)
  config.eval.every_steps = 0
  workdir = str(root / "run")
  state = train.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return config, state, rows, both


def _file_values(path):
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


def test_frozen_convnext_comes_from_its_file_and_the_term_is_trained(pixel_run):
  config, state, rows, _ = pixel_run
  assert int(state.step) == 2 and set(state.aux) == {"convnext"}  # lpips_weight=0: no LPIPS.
  got = traverse_util.flatten_dict(jax.device_get(state.aux["convnext"]["params"]), sep="/")
  want = _file_values(config.pmf.convnext_path)
  assert sorted(got) == sorted(want)
  for name, value in want.items():
    np.testing.assert_array_equal(got[name], value, err_msg=name)
  logged = [r for r in rows if "loss_convnext" in r]
  assert logged and all(r["loss_convnext"] > 0 and r["loss_lpips"] == 0 for r in logged)
  assert all(np.isfinite(r["loss"]) for r in logged)


def test_both_frozen_networks_load_their_files_in_their_placeholders_shapes(pixel_run):
  """What train.load_frozen_networks does for each declared network: its format reads the file
  for its module, into the shapes of the state's placeholder."""
  *_, both = pixel_run
  frozen = pmf_objective.PMF().frozen_networks(both)
  assert [f.aux_key for f in frozen] == ["lpips", "convnext"]
  for f in frozen:
    loaded = train.weights_format(f).load_variables(f.path, f.module)
    placeholder = f.placeholder(jax.random.key(0))
    assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(placeholder)
    got = traverse_util.flatten_dict(jax.device_get(loaded["params"]), sep="/")
    shapes = traverse_util.flatten_dict(placeholder["params"], sep="/")
    want = _file_values(f.path)
    assert sorted(got) == sorted(want) == sorted(shapes), f.aux_key
    for name, value in want.items():
      assert got[name].shape == shapes[name].shape, name
      np.testing.assert_array_equal(got[name], value, err_msg=f"{f.aux_key}/{name}")


def test_sampler_is_the_x_prediction_at_the_noise_scale(pixel_run):
  config, state, *_ = pixel_run
  mesh = sharding.make_mesh()
  model = train_state.build_model(config)
  sample_fn = generate.make_sampler(config, model, mesh)
  leaves, tree = jax.tree_util.tree_flatten(state.params)
  keys = jax.random.split(jax.random.key(5), len(leaves))
  params = jax.tree_util.tree_unflatten(tree, [  # Zero-initialised gates and heads moved.
      a + 0.1 * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys)])
  got = generate.draw(config, sample_fn, params, mesh, 8, 1, seed=3, cfg_scale=4.0,
                      interval=(0.2, 0.7))[0]
  noise, labels = generate.sample_inputs(jax.random.fold_in(jax.random.key(3), 0), 0, 8,
                                         (SIZE, SIZE, 3), CLASSES)
  ones = jax.numpy.ones((8,))
  x_u = jax.jit(model.apply)(params, 2.0 * noise, ones, 4.0 * ones, 0.2 * ones, 0.7 * ones,
                            labels)[0]
  np.testing.assert_allclose(got, np.asarray(x_u), rtol=0, atol=1e-5)


def test_checks_name_the_pmf_fields():
  config = pmf_digits.get_config()
  config_checks.validate_static(config)
  config.pmf.lpips_weight = 0.4  # Digits are grey: no RGB perceptual network fits.
  with pytest.raises(ConfigError, match=r"pmf\.lpips_weight=0\.4.*data\.channels=1"):
    config_checks.validate_static(config)
  config = imagenet_pmf.get_config("B/16")
  config.eval.every_steps = 0
  with pytest.raises(ConfigError, match=r"pmf\.lpips_path is empty but pmf\.lpips_weight=0\.4"):
    pmf_objective.PMF().validate_files(config)
  config.pmf.lpips_path = "/nonexistent/lpips.npz"
  with pytest.raises(ConfigError, match=r"pmf\.lpips_path='/nonexistent/lpips\.npz' is not a file"):
    pmf_objective.PMF().validate_files(config)


@pytest.mark.parametrize("variant", list(imagenet_pmf.VARIANTS))
def test_imagenet_configs_pass_the_checks(variant):
  config = imagenet_pmf.get_config(variant)
  config.eval.every_steps = 0
  config_checks.validate(config, mode="sample")
  size = imagenet_pmf.VARIANTS[variant][0]
  assert (config.data.image_size, config.data.channels, config.data.name) == (
      size, 3, "imagenet_pixels")
  assert config.data.image_size // int(variant.split("/")[1]) == 16  # 256 patch tokens.
  assert config.optim.name == "muon" and tuple(config.ema_half_lives_kimg) == (500, 1000, 2000)
