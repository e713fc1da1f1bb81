"""The release's feature encoders: converted golden weights give the official features; sizes.

Golden files: scripts/make_drifting_encoder_golden.py ran the official MAEResNetJAX and ConvNextV2
(lambertae/drifting at accd0cf0, patched to float64) on tiny configurations with deterministic
weights. Here the official parameter trees go through mf_jax.convert.drifting.encoders into this
project's modules, run in float64, and every feature set must match to 1e-5 relative (the stored
float32 roundings of the float64 results differ by < 1e-7).
"""
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from configs import mae_latent_256, mae_latent_640, mae_pixel_640, tiny
from mf_jax import config_checks, drifting_features, networks
from mf_jax import train_state as ts
from mf_jax.convert import engine
from mf_jax.convert.drifting import encoders
from mf_jax.models import convnext, mae_resnet, release_features

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")
RTOL = 1e-5


def _load(name):
  with np.load(os.path.join(GOLDEN, name)) as f:
    return {k: f[k] for k in f.files}


def _params(golden, prefix):
  return {k[len(prefix):]: v for k, v in golden.items() if k.startswith(prefix)}


def _to64(variables):
  return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), variables)


def _max_rel(ours, ref):
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape
  return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


@pytest.fixture(scope="module")
def mae_golden():
  return _load("drifting_mae.npz")


@pytest.mark.parametrize("config_module, name", [
    (mae_latent_256, "mae_latent_256"), (mae_latent_640, "mae_latent_640"),
    (mae_pixel_640, "mae_pixel_640")])
def test_param_counts_equal_the_release(mae_golden, config_module, name):
  config = config_module.get_config()
  model = ts.build_model(config)  # From shapes only: jax.eval_shape inside param_count.
  assert mae_resnet.param_count(model, config.data.image_size) == int(mae_golden[f"param_count/{name}"])


@pytest.mark.parametrize("case", ["latent", "pixel"])
def test_mae_features_and_reconstruction_match_the_release(mae_golden, case):
  channels, patch, size, width, *layers = (int(v) for v in mae_golden[f"{case}/config"])
  x, mask = mae_golden[f"{case}/x"], mae_golden[f"{case}/mask"]
  with jax.enable_x64(True):
    model = mae_resnet.MAEResNet(channels=channels, widths=tuple(width * 2 ** s for s in range(4)),
                                 layers=tuple(layers), input_patch_size=patch, num_classes=10,
                                 dtype=jnp.float64)
    variables = _to64(encoders.convert_mae(_params(mae_golden, f"{case}/params/"), model, size))
    feature_fn = release_features.release_feature_fn(
        lambda z: model.apply(variables, z, method=model.activations))
    # One compile (eager Flax compiles op by op, which is slower); the decoder and classifier
    # (the same code for both cases) only for the latent case.
    with_decoder = case == "latent"
    feats, out = jax.jit(lambda z, m: (feature_fn(z), model.apply(variables, z, m)
                                       if with_decoder else {}))(
        jnp.asarray(x, jnp.float64), jnp.asarray(mask))
  ref = _params(mae_golden, f"{case}/features/")
  assert set(feats) == set(ref) | {"global"}
  np.testing.assert_array_equal(feats["global"], x.reshape(x.shape[0], 1, -1))
  errors = {k: _max_rel(feats[k], v) for k, v in ref.items()}
  for name in out:
    errors[name] = _max_rel(out[name], mae_golden[f"{case}/{name}"])
  worst = max(errors, key=errors.get)
  assert errors[worst] < RTOL, (worst, errors[worst])
  # The key set of the release: stem, 4 stages and every 2nd block, each with mean/std/patches.
  assert {"norm_x", "conv1_std_4", "layer2_blk2", "layer2_blk2_mean_2", "layer4_std"} <= set(ref)
  assert not any("blk1" in k or "blk3" in k for k in ref)


def test_convnext_features_match_the_release():
  golden = _load("drifting_convnext.npz")
  with jax.enable_x64(True):
    model = convnext.ConvNeXtV2(depths=tuple(golden["config/depths"]),
                                dims=tuple(golden["config/dims"]), dtype=jnp.float64)
    variables = _to64(encoders.convert_convnext(_params(golden, "params/"), model))
    feats = jax.jit(convnext.convnext_feature_fn(model, variables))(
        jnp.asarray(golden["x"], jnp.float64))
  ref = _params(golden, "features/")
  assert set(feats) == set(ref)
  errors = {k: _max_rel(feats[k], v) for k, v in ref.items()}
  worst = max(errors, key=errors.get)
  assert errors[worst] < RTOL, (worst, errors[worst])


def test_converter_names_missing_and_misshaped_keys(mae_golden):
  params = _params(mae_golden, "latent/params/")
  model = mae_resnet.MAEResNet(channels=4, widths=(32, 64, 128, 256), layers=(3, 2, 1, 1),
                               num_classes=10)
  del params["encoder/stages_1/layers_0/proj_gn/scale"]
  params["decoder/up43/proj/conv/kernel"] = params["decoder/up43/proj/conv/kernel"][:, :, :5]
  params["encoder/extra/kernel"] = np.zeros(3)
  with pytest.raises(ValueError) as err:
    encoders.convert_mae(params, model, 8)
  message = str(err.value)
  assert "3 problem(s)" in message
  assert "missing: encoder/stage1_block0/skip_norm/scale" in message
  assert "misshaped: decoder/up43/proj/conv/kernel (3, 3, 5, 128)" in message
  assert "unmapped: encoder/extra/kernel" in message


def test_drifting_uses_the_release_feature_set():
  config = tiny.get_config()
  config.data.update(name="digits", image_size=8, channels=1, num_classes=10)
  config.mae.update(arch="release", widths=(8, 16, 16, 16), layers=(1, 2, 1, 1))
  encoder = networks.mae_model(config)
  x = jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32)
  params = jax.eval_shape(encoder.init, jax.random.key(1), x, np.zeros((2, 8, 8, 1), bool))
  feats = jax.eval_shape(lambda p, z: drifting_features.drifting_feature_fn(config, p)(z), params, x)
  assert {"global", "norm_x", "conv1", "layer2_blk2_std_2", "layer4_mean"} <= set(feats)
  assert feats["layer2_blk2_std_2"].shape == (2, 4, 16)  # 4x4 map: four 2x2 windows of 16 channels.
  assert all(f.ndim == 3 and f.shape[0] == 2 for f in feats.values())


class _ZeroReconstruction:
  """Stands in for MAEResNet in mae_loss: reconstructs zeros (input_patch_size 2 folds 2x2)."""
  input_patch_size = 2

  def apply(self, params, x, mask):
    del params, mask
    return {"recon": jnp.zeros((x.shape[0], x.shape[1] // 2, x.shape[2] // 2, 4 * x.shape[3]))}


def test_release_mae_loss_averages_hidden_cells():
  """Reconstructing zeros, the loss is the mean over samples of the mean over hidden cells of the
  folded |x|^2 summed over channels."""
  x = np.random.default_rng(0).normal(size=(3, 8, 8, 1)).astype(np.float32)
  key = jax.random.key(2)
  loss, metrics = mae_resnet.mae_loss(_ZeroReconstruction(), None, x, key, 0.5, 2)
  hidden = np.asarray(mae_resnet.patch_mask(key, 3, 8, 8, 2, 0.5, 2))[..., 0]
  assert hidden.reshape(3, 2, 4, 2, 4).std(axis=(2, 4)).max() == 0  # Constant on 4x4 cells.
  sq = x[..., 0] ** 2
  # Folded cell (i, j) holds the 2x2 pixels at (2i.., 2j..): its error is their sum.
  cell_err = sq.reshape(3, 4, 2, 4, 2).sum(axis=(2, 4))
  cell_hidden = hidden[:, ::2, ::2]
  want = np.mean([cell_err[i][cell_hidden[i]].mean() for i in range(3)])
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  assert 0.0 < float(metrics["mask_ratio"]) < 1.0


def _hf_name(release: str) -> str:
  """The Hugging Face ConvNextV2 name of a release ConvNeXt leaf (the release's own mapping, read
  backwards), for a state dict built from the golden tree."""
  rules = (
      (r"downsample_layers_0/layers_0/kernel", "convnextv2.embeddings.patch_embeddings.weight"),
      (r"downsample_layers_0/layers_0/bias", "convnextv2.embeddings.patch_embeddings.bias"),
      (r"downsample_layers_0/layers_1/(weight|bias)", r"convnextv2.embeddings.layernorm.\1"),
      (r"downsample_layers_(\d)/layers_0/(weight|bias)", r"convnextv2.encoder.stages.\1.downsampling_layer.0.\2"),
      (r"downsample_layers_(\d)/layers_1/kernel", r"convnextv2.encoder.stages.\1.downsampling_layer.1.weight"),
      (r"downsample_layers_(\d)/layers_1/bias", r"convnextv2.encoder.stages.\1.downsampling_layer.1.bias"),
      (r"stages_(\d)/layers_(\d+)/norm/(weight|bias)", r"convnextv2.encoder.stages.\1.layers.\2.layernorm.\3"),
      (r"stages_(\d)/layers_(\d+)/grn/gamma", r"convnextv2.encoder.stages.\1.layers.\2.grn.weight"),
      (r"stages_(\d)/layers_(\d+)/grn/beta", r"convnextv2.encoder.stages.\1.layers.\2.grn.bias"),
      (r"stages_(\d)/layers_(\d+)/(\w+)/kernel", r"convnextv2.encoder.stages.\1.layers.\2.\3.weight"),
      (r"stages_(\d)/layers_(\d+)/(\w+)/bias", r"convnextv2.encoder.stages.\1.layers.\2.\3.bias"),
      (r"norm/scale", "convnextv2.layernorm.weight"), (r"norm/bias", "convnextv2.layernorm.bias"))
  for pattern, target in rules:
    if re.fullmatch(pattern, release):
      return re.sub(pattern, target, release)
  raise KeyError(release)


def _hf_state_dict(release):
  """The golden release tree as a Hugging Face ConvNextV2ForImageClassification state dict."""
  def to_torch(name, a):  # Flax [kh, kw, in, out] / [in, out] -> PyTorch [out, in, kh, kw] / [out, in].
    if "grn" in name:
      return a
    return a.transpose(3, 2, 0, 1) if a.ndim == 4 else (a.T if a.ndim == 2 else a)
  state_dict = {_hf_name(k): np.ascontiguousarray(to_torch(k, v)) for k, v in release.items()}
  state_dict["classifier.weight"] = np.zeros((5, 64), np.float32)  # Ignored by the features.
  return state_dict


def test_hugging_face_convnext_state_dict_converts_like_the_release_tree():
  golden = _load("drifting_convnext.npz")
  release = _params(golden, "params/")
  state_dict = _hf_state_dict(release)
  model = convnext.ConvNeXtV2(depths=tuple(golden["config/depths"]), dims=tuple(golden["config/dims"]))
  want = traverse_util.flatten_dict(encoders.convert_convnext(release, model))
  got = traverse_util.flatten_dict(encoders.convert_convnext_hf(state_dict, model))
  assert set(got) == set(want)
  for key in want:
    np.testing.assert_array_equal(got[key], want[key], err_msg=str(key))


@pytest.mark.parametrize("overrides, message", [
    ({"widths": (8, 16)}, r"mae\.widths=\(8, 16\) and mae\.layers=\(3, 4, 6, 3\) need 4 entries"),
    ({"input_patch_size": 3}, r"mae\.patch_size=2 x mae\.input_patch_size=3 = 6 must divide "
                              r"data\.image_size=8"),
])
def test_release_mae_config_errors_name_the_field(overrides, message):
  config = tiny.get_config()
  config.method = "mae"
  config.mae.update(dict(dict(arch="release", widths=(8, 8, 8, 8)), **overrides))
  with pytest.raises(config_checks.ConfigError, match=message):
    config_checks.validate(config)


def test_cli_converts_a_release_mae_into_the_workdir_drifting_reads(tmp_path, mae_golden):
  """python -m mf_jax.convert.drifting --encoder_src --encoder_workdir: the release MAE artifact
  (the golden tree in the release's msgpack layout) becomes an MAE workdir, and the drifting
  trainer's load_frozen_networks reads back exactly the converted parameters, less the pretraining
  heads (decoder, classifier)."""
  from flax import serialization  # pylint: disable=import-outside-toplevel
  from mf_jax import sharding as sharding_lib  # pylint: disable=import-outside-toplevel
  from mf_jax import train  # pylint: disable=import-outside-toplevel
  from mf_jax.convert.drifting import __main__ as cli  # pylint: disable=import-outside-toplevel
  channels, patch, size, width, *layers = (int(v) for v in mae_golden["latent/config"])
  release = _params(mae_golden, "latent/params/")
  src = tmp_path / "mae_release"
  src.mkdir()
  (src / "ema_params.msgpack").write_bytes(serialization.msgpack_serialize(
      {"params": traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in release.items()})}))
  config = tiny.get_config()
  config.method = "drifting"
  config.data.update(image_size=size, channels=channels, num_classes=10)
  config.mae.update(arch="release", widths=tuple(width * 2 ** s for s in range(4)),
                    layers=tuple(layers), input_patch_size=patch, compute_dtype="float32")
  workdir = tmp_path / "mae_workdir"
  state, _ = cli.convert_encoder_to_workdir(str(src), config, str(workdir))
  model = networks.mae_model(config)
  want = traverse_util.flatten_dict(
      networks.frozen_encoder_variables(encoders.convert_mae(release, model, size)), sep="/")

  config.drifting.feature_encoder_workdir = str(workdir)
  abstract = jax.eval_shape(lambda k: ts.init_state(config, ts.build_model(config),
                                                    ts.make_optimizer(config), k),
                            jax.random.key(0))
  shardings = ts.state_shardings(sharding_lib.make_mesh(1), abstract)
  got = traverse_util.flatten_dict(jax.device_get(
      train.load_frozen_networks(config, abstract, shardings).aux["encoder"]), sep="/")
  assert sorted(got) == sorted(want) and int(state.step) == 0
  for k, v in want.items():
    np.testing.assert_array_equal(got[k], np.asarray(v, np.float32))
  with pytest.raises(engine.UserError, match="already holds checkpoints"):
    cli.convert_encoder_to_workdir(str(src), config, str(workdir))


def test_cli_converts_hugging_face_convnext_into_the_file_drifting_reads(tmp_path):
  """python -m mf_jax.convert.drifting --convnext_src --convnext_out: a local Hugging Face folder
  (model.safetensors) becomes the weights file of drifting.convnext_path, and the trainer's
  load_frozen_networks reads back exactly the converted parameters."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  from mf_jax import sharding as sharding_lib  # pylint: disable=import-outside-toplevel
  from mf_jax import train  # pylint: disable=import-outside-toplevel
  from mf_jax.convert.drifting import __main__ as cli  # pylint: disable=import-outside-toplevel
  golden = _load("drifting_convnext.npz")
  release = _params(golden, "params/")
  src = tmp_path / "convnextv2-tiny-hf"
  src.mkdir()
  save_file(_hf_state_dict(release), str(src / "model.safetensors"))
  config = tiny.get_config()
  config.method = "drifting"
  config.drifting.update(use_convnext=True, convnext_depths=tuple(golden["config/depths"]),
                         convnext_dims=tuple(golden["config/dims"]))
  out = str(tmp_path / "convnext.npz")
  cli.convert_convnext_to_file(str(src), config, out)
  want = traverse_util.flatten_dict(encoders.convert_convnext(release, networks.convnext_model(config)),
                                    sep="/")
  config.drifting.convnext_path = out
  abstract = jax.eval_shape(lambda k: ts.init_state(config, ts.build_model(config),
                                                    ts.make_optimizer(config), k),
                            jax.random.key(0))
  shardings = ts.state_shardings(sharding_lib.make_mesh(1), abstract)
  got = traverse_util.flatten_dict(jax.device_get(
      train.load_frozen_networks(config, abstract, shardings).aux["convnext"]), sep="/")
  assert sorted(got) == sorted(want)
  for k, v in want.items():
    np.testing.assert_array_equal(got[k], np.asarray(v, np.float32))
  with pytest.raises(engine.SourceError, match="holds neither model.safetensors nor pytorch_model"):
    cli.convert_convnext_to_file(str(tmp_path), config, out)


@pytest.mark.parametrize("arch", ["resnet", "release"])
def test_frozen_encoder_stored_in_bfloat16_gives_the_same_features(arch):
  """The drifting state stores a bf16 MAE's kernels in bf16 (networks.frozen_encoder_variables): the
  features equal, bit for bit, those of the float32 variables, because each convolution casts its
  kernel to bf16 anyway; the norms' parameters, used in float32, stay float32."""
  config = tiny.get_config()
  config.method = "drifting"
  config.data.update(image_size=8, channels=4)
  config.mae.update(arch=arch, compute_dtype="bfloat16", widths=(8, 16, 16, 16), layers=(1, 1, 1, 1),
                    blocks_per_stage=1, groups=4, decoder_width=8)
  mae = config.copy_and_resolve_references()
  mae.method = "mae"
  variables = networks.mae_model(mae).init(jax.random.key(0), *ts.example_inputs(mae))
  rng = np.random.default_rng(0)  # Norm scales and biases away from 1 and 0, where bf16 would show.
  variables = jax.tree_util.tree_map(
      lambda a: np.asarray(a) + rng.normal(0, 0.3, a.shape).astype(np.float32), variables)
  stored = networks.frozen_encoder_variables(variables, jnp.bfloat16)
  flat = traverse_util.flatten_dict(stored["params"]["encoder"], sep="/")
  dtypes = {k: str(v.dtype) for k, v in flat.items()}
  assert {d for k, d in dtypes.items() if k.endswith("kernel")} == {"bfloat16"}
  assert {d for k, d in dtypes.items() if not k.endswith("kernel")} == {"float32"}
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 4)), jnp.float32)
  features = jax.jit(lambda v, x: drifting_features.drifting_feature_fn(config, v)(x))
  want = features(networks.frozen_encoder_variables(variables), x)
  got = features(stored, x)
  assert sorted(got) == sorted(want)
  for k in want:
    np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]), err_msg=k)
  # Rounding the norms' parameters too would change the features: the check can see bf16.
  rounded = features(jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), stored), x)
  assert any(np.any(np.asarray(rounded[k]) != np.asarray(want[k])) for k in want)
