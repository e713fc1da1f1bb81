"""A tiny pixel-space drifting run: prepare_imagenet --pixels -> the real trainer (random crops,
flips, class queues, a small generator on 16 x 16 x 3 pixels) -> sample grid and Frechet distance,
without a VAE; the same config on latent data asks for one. The pixel configs' ConvNeXt-V2 features
(use_convnext, a tiny random ConvNeXt file) are checked on one device, on the drifting objective
alone: compiling them into the 8-device train step costs ~40 s more and checks no more wiring.

The generator is an MLP: the drifting step compiles in half the time of a DiT's, and the pixel
path (data, augmentation, decoding switch) is the same for either; the B/16 DiT of the shipped
config is checked by the config checks (patch 16 divides 256)."""
import json
import os

import numpy as np
import pytest
from PIL import Image

import jax
import jax.numpy as jnp
from flax import traverse_util
from configs import imagenet_drift_pixel_b16
from eval import fid, stats
from input_pipeline import prepare_imagenet
from mf_jax import config_checks, generate, networks, objectives, sharding, train, train_state
from mf_jax.objectives import drifting as drifting_objective
from mf_jax.convert import meanflow_official
from mf_jax.models import convnext
from mf_jax.convert.formats import convnext as convnext_format

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
  # A tiny ConvNeXt-V2 weights file with random values everywhere (GRN included, whose
  # initialisation is the identity; LayerNorm scales too).
  model = convnext.ConvNeXtV2(depths=CONVNEXT_DEPTHS, dims=CONVNEXT_DIMS)
  variables = jax.tree_util.tree_map(
      lambda a: (0.3 * rng.normal(size=a.shape)).astype(np.float32),
      jax.eval_shape(model.init, jax.random.key(3), convnext.example_input()))
  weights = str(root / "convnext_tiny.npz")
  convnext_format.save_variables(weights, variables)
  return out, ref, weights


CONVNEXT_DEPTHS, CONVNEXT_DIMS = (1, 1, 1, 1), (8, 8, 8, 8)


def tiny_pixel_config(path, ref_stats, convnext_path):
  """The shipped B/16 pixel config, shrunk: same data set, augmentation and loss, no MAE, a tiny
  ConvNeXt."""
  config = imagenet_drift_pixel_b16.get_config()
  config.data.update(path=path, image_size=SIZE, num_classes=CLASSES)
  config.drifting.update(convnext_path=convnext_path, convnext_depths=CONVNEXT_DEPTHS,
                         convnext_dims=CONVNEXT_DIMS)
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


CONVNEXT_SETS = {"global_mean", "global_std"} | {
    f"convenxt_stage_{i}{s}" for i in range(4) for s in ("_mean", "_std")} | {
        f"convenxt_stage_{i}" for i in (1, 2, 3)}  # The release's names (typo included).


def independent_pixel_fd(config, state) -> float:
  """FD of eval.num_samples generated pixels against eval.ref_stats, without the evaluator:
  |mu1 - mu2|^2 + tr S1 + tr S2 - 2 sum sqrt(eig(S1 S2)), eigenvalues of a product of two
  covariance matrices (real, >= 0 up to rounding)."""
  ev, d = config.eval, config.data
  model = train_state.build_model(config)
  params = state.ema_params[ev.ema_index]
  images = []
  for i in range(ev.num_samples // ev.batch_size):
    noise, labels = generate.sample_inputs(jax.random.fold_in(jax.random.key(ev.seed), i),
                                           i * ev.batch_size, ev.batch_size,
                                           (d.image_size, d.image_size, d.channels),
                                           d.num_classes, ev.label_sampling)
    alpha = jnp.full((ev.batch_size,), ev.cfg_scale)
    x = networks.generator_fn(model, params)(noise, alpha, labels)
    images.append(np.asarray(generate.quantize_uint8(x, ev.uint8_rounding)))
  feats = np.concatenate(images).reshape(ev.num_samples, -1).astype(np.float64) / 255.0
  with np.load(ev.ref_stats) as ref:
    mu2, sigma2 = ref["mu"].astype(np.float64), ref["sigma"].astype(np.float64)
  mu1, sigma1 = feats.mean(0), np.cov(feats, rowvar=False)
  eig = np.linalg.eigvals(sigma1 @ sigma2)
  root = np.sqrt(np.clip(eig.real, 0.0, None)).sum()
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * root)


def test_tiny_pixel_drifting_trains_samples_and_scores_without_a_vae(pixel_data, tmp_path):
  config = tiny_pixel_config(*pixel_data)
  assert config.data.random_crop_min_area > 0 and config.data.random_flip  # Release augmentation.
  config.drifting.use_convnext = False  # Checked below and in the next test.
  workdir = str(tmp_path / "run")
  state = train.train_and_evaluate(config, workdir)
  assert int(state.step) == 2 and "convnext" not in state.aux
  # The banks hold 8-bit pixels (drifting.bank_dtype="uint8"; every level kept, draws within
  # 2^-24 of a float32 bank's: test_class_queues.py).
  assert state.aux["queues"].samples.dtype == state.aux["uncond_queue"].samples.dtype == jnp.uint8
  assert np.asarray(state.aux["queues"].samples).std() > 10  # Filled with images, not zeros.
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  losses = [r["loss"] for r in rows if "loss" in r]
  scores = [r["fd_pixels_1nfe"] for r in rows if "fd_pixels_1nfe" in r]
  assert len(losses) == 2 and all(np.isfinite(losses))
  sets = {k[len("loss/"):]: v for k, v in rows[0].items() if k.startswith("loss/")}
  assert set(sets) == {"raw"} and sets["raw"] == rows[0]["loss"]  # Raw pixels alone.
  assert len(scores) == 1
  # The score is the Frechet distance of the EMA generator's samples: recomputed here from the
  # generator itself (the evaluator's inputs: eval.seed chunks, eval.cfg_scale as alpha) and the
  # reference file, with the plain formula in float64 (the evaluator uses the n << D form).
  assert scores[0] == pytest.approx(independent_pixel_fd(config, state), rel=1e-5)
  # The sample grid (8 samples in a row): generator pixels as they are, no decoding.
  grid = np.asarray(Image.open(os.path.join(workdir, "samples", "step_00000002_1nfe.png")))
  assert grid.shape == (SIZE + 2, 8 * (SIZE + 1) + 1, 3)
  tiles = [grid[1:1 + SIZE, 1 + k * (SIZE + 1):1 + k * (SIZE + 1) + SIZE] for k in range(8)]
  assert min(t.std() for t in tiles) > 0  # Images, not the white fill of a skipped grid.

  config.drifting.use_convnext = True
  latent = tiny_pixel_config(*pixel_data)
  latent.data.name = "imagenet_latents"
  latent.drifting.use_convnext = False  # Checked below.
  with pytest.raises(ValueError, match=r"drifting\.bank_dtype='uint8' stores 8-bit pixels, which "
                                       r"data\.name='imagenet_latents' does not give"):
    config_checks.validate(latent)
  latent.drifting.bank_dtype = "float32"
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
  config.data.vae_path = ""
  # ConvNeXt weights: named before anything compiles when absent or of another size.
  weights = config.drifting.convnext_path
  config.drifting.convnext_path = ""
  with pytest.raises(ValueError, match=r"drifting\.use_convnext=True but drifting\.convnext_path "
                                       r"is empty: convert .*python -m mf_jax.convert convnext"):
    config_checks.validate(config)
  config.drifting.convnext_path = weights + ".missing"
  with pytest.raises(ValueError, match=r"drifting\.convnext_path=.*\.missing' is not a file"):
    config_checks.validate(config)
  config.drifting.update(convnext_path=weights, convnext_dims=(8, 16, 8, 8))
  with pytest.raises(ValueError, match=r"drifting\.convnext_path=.*: the weights do not fit "
                                       r"depths=\(1, 1, 1, 1\), dims=\(8, 16, 8, 8\); \d+ "
                                       r"problem\(s\): misshaped: down1_conv/bias \(8,\) -> "
                                       r"down1_conv/bias \(16,\)"):
    config_checks.validate(config)
  latent.drifting.use_convnext = True
  latent.data.vae_path = workdir
  with pytest.raises(ValueError, match=r"drifting\.use_convnext=True needs RGB pixel samples"):
    config_checks.validate(latent)


def test_convnext_feature_sets_join_the_pixel_loss_from_the_state(pixel_data):
  """use_convnext: ConvNeXt's 13 feature sets join the raw 'global' set in the loss, which is their
  sum, computed with the variables of state.aux["convnext"] (read from drifting.convnext_path),
  and their gradients reach the generator. One device: the objective, jitted once."""
  config = tiny_pixel_config(*pixel_data)
  assert config.drifting.use_convnext
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  model = train_state.build_model(config)
  params = model.init(jax.random.key(0), *train_state.example_inputs(config))
  from_file = convnext_format.load_variables(config.drifting.convnext_path,
                                      networks.convnext_model(config))
  other = jax.tree_util.tree_map(lambda a: 0.5 * a, from_file)
  rng = np.random.RandomState(1)
  real = {"positives": rng.uniform(-1, 1, (CLASSES, 4, SIZE, SIZE, 3)).astype(np.float32),
          "uncond": rng.uniform(-1, 1, (CLASSES, 2, SIZE, SIZE, 3)).astype(np.float32)}
  classes = np.arange(CLASSES, dtype=np.int32)

  def loss_and_grads(params, aux, real, classes, key):
    return drifting_objective.drifting_value_and_grad(
        model, config, aux["encoder"], mesh, aux["convnext"])(params, real, classes, key)

  # XLA's backend optimisations take most of this compile and change no result checked here.
  step = jax.jit(loss_and_grads).lower(
      params, {"encoder": None, "convnext": from_file}, real, classes, jax.random.key(1)).compile(
          compiler_options={"xla_backend_optimization_level": 0})
  results = [jax.device_get(step(params, {"encoder": None, "convnext": variables}, real, classes,
                                 jax.random.key(1))) for variables in (from_file, other)]
  sets = []
  for (loss, metrics), _ in results:
    sets.append({k[len("loss/"):]: v for k, v in metrics.items() if k.startswith("loss/")})
    assert set(sets[-1]) == {"global"} | CONVNEXT_SETS
    np.testing.assert_allclose(sum(sets[-1].values()), loss, rtol=1e-5)
    assert min(sets[-1][k] for k in CONVNEXT_SETS) > 0
  # The ConvNeXt terms follow the variables in the state; the raw term does not see them.
  assert sets[0]["global"] == sets[1]["global"]
  assert all(sets[0][k] != sets[1][k] for k in CONVNEXT_SETS)
  grads = [jax.tree_util.tree_leaves(g) for _, g in results]
  assert all(np.isfinite(g).all() for g in grads[0])
  assert any(not np.allclose(a, b) for a, b in zip(*grads))  # Through ConvNeXt to the generator.


def test_training_starts_from_the_saved_frozen_encoders(pixel_data, tmp_path):
  """At step 0, train_and_evaluate puts both frozen encoders of a pixel run into the state, and a
  step keeps them: ConvNeXt exactly as in the drifting.convnext_path file, the MAE's EMA parameters
  from the drifting.feature_encoder_workdir checkpoint (written as the converter writes one). The
  loss is a stand-in: the encoders' part in the real loss is checked above (ConvNeXt) and in
  test_drifting_train.py (MAE); compiling it here costs ~40 s and checks no more loading."""
  config = tiny_pixel_config(*pixel_data)
  config.mae.update(widths=(8, 8, 8, 8), layers=(1, 1, 1, 1))  # The release MAE, smallest.
  config.train.update(num_steps=1, sample_every=0)
  config.eval.every_steps = 0
  mae = config.copy_and_resolve_references()
  mae.method = "mae"
  abstract = jax.eval_shape(lambda k: train_state.init_state(
      mae, train_state.build_model(mae), train_state.make_optimizer(mae), k), jax.random.key(0))
  rng = np.random.RandomState(2)
  draw = lambda tree: jax.tree_util.tree_map(
      lambda a: rng.normal(size=a.shape).astype(a.dtype), tree)
  saved = abstract.replace(  # Parameters and EMA copy differ, so the test sees which is loaded.
      step=np.int32(5), params=draw(abstract.params), ema_params=tuple(
          draw(p) for p in abstract.ema_params), nonfinite_step=np.int32(-1),
      opt_state=jax.tree_util.tree_map(lambda a: np.zeros(a.shape, a.dtype), abstract.opt_state))
  meanflow_official.write_workdir(saved, mae, str(tmp_path / "mae"))
  config.drifting.feature_encoder_workdir = str(tmp_path / "mae")

  class StandInLoss(drifting_objective.Drifting):
    """Drifting's state and step-0 loading, with a cheap stand-in for the field."""
    name = "drifting_stand_in_loss"

    def make_step_grads(self, config, model, mesh):
      def step_grads(params, aux, x, labels, augment_labels, k_loss, k_aux):
        aux, _, _ = drifting_objective.drifting_inputs(aux, x, labels, k_aux, config)
        loss_fn = lambda p: sum(jnp.sum(jnp.square(a)) for a in jax.tree_util.tree_leaves(p))
        loss, grads = jax.value_and_grad(loss_fn)(params)
        return aux, (loss, {}), grads
      return step_grads

  objectives.register(StandInLoss())
  config.method = StandInLoss.name
  with jax.default_prng_impl("rbg"):  # Initialising both placeholders: quick to compile with rbg.
    state = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert int(state.step) == 1
  flat = lambda tree: traverse_util.flatten_dict(jax.device_get(tree), sep="/")
  with np.load(config.drifting.convnext_path) as f:
    pairs = [(flat(state.aux["convnext"]["params"]), {k: f[k] for k in f.files})]
  # The MAE without its pretraining heads (decoder, classifier), which the features never read,
  # and with its convolution kernels in its compute dtype (bfloat16), as they are used.
  mae_params = dict(saved.ema_params[0]["params"])
  assert {"decoder", "classifier"} <= set(mae_params) and config.mae.compute_dtype == "bfloat16"
  del mae_params["decoder"], mae_params["classifier"]
  want_mae = {k: v.astype(jnp.bfloat16) if k.endswith("/kernel") else v
              for k, v in flat({"params": mae_params}).items()}
  pairs.append((flat(state.aux["encoder"]), want_mae))
  for got, want in pairs:
    assert sorted(got) == sorted(want)
    for k, v in want.items():
      assert got[k].dtype == v.dtype, k
      np.testing.assert_array_equal(got[k], v, err_msg=k)


@pytest.mark.parametrize("name,dims", [("imagenet_drift_pixel_b16", (12, 768, 12, 16)),
                                       ("imagenet_drift_pixel_l16", (24, 1024, 16, 16))])
def test_shipped_pixel_configs_pass_the_checks_without_a_vae(name, dims):
  config = __import__(f"configs.{name}", fromlist=["get_config"]).get_config()
  config.eval.every_steps = 0  # Scoring needs Inception weights and ADM statistics, not a VAE.
  assert config.data.name == "imagenet_pixels" and config.data.vae_path == ""
  # The release's pixel features: MAE-640 and ConvNeXt-V2-Base in float32; float32 attention.
  assert config.drifting.use_convnext and config.model.attn_fp32
  assert config.drifting.bank_dtype == "uint8"  # 8-bit pixels: a quarter of the bank memory.
  assert (tuple(config.drifting.convnext_depths), tuple(config.drifting.convnext_dims),
          config.drifting.convnext_compute_dtype) == ((3, 3, 27, 3), (128, 256, 512, 1024),
                                                      "float32")
  config_checks.validate(config, mode="sample")  # (Training also checks the records' shape.)
  model = train_state.build_model(config)
  assert model.dims() == dims and (config.data.image_size, config.data.channels) == (256, 3)
