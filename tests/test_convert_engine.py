"""The converter engine (mf_jax/convert/engine.py) and every format's table report ALL problems.

For each foreign format a complete tiny source (the golden files of the format's own tests, or
one built from the tiny model's shapes by the inverse PyTorch layout) is broken three ways at once:
one key the table has no place for, one misshaped tensor, one deleted key. The conversion must
raise one ConversionError whose problem list is exactly those three, named. A complete source
must convert (so the breaks, not the source, cause the problems). User errors of the CLI and of
the old entry points exit 2 with one `tool: error: <file>: ...` line and no traceback.
"""
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mf_jax.convert import __main__ as cli
from mf_jax.convert import engine, readers
from mf_jax.convert.formats import (convnext as convnext_format, drifting_generator,
                                    drifting_mae, imf_official, inception as inception_format,
                                    lpips_vgg16, meanflow_official, py_meanflow_unet, sd_vae)
from mf_jax.models import convnext, lpips, mae_resnet, vae
from mf_jax.models.unet import SongUNet

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
  with np.load(os.path.join(GOLDEN, name)) as f:
    return {k: f[k] for k in f.files}


def _prefixed(golden, prefix):
  return {k[len(prefix):]: v for k, v in golden.items() if k.startswith(prefix)}


def _torch_layout(path: str, shape):
  """A Flax path and shape -> the PyTorch key and shape (diffusers/torchvision module names)."""
  *modules, leaf = path.split("/")
  modules = [re.sub(r"_(\d+)$", r".\1", m) for m in modules]
  leaf = {"kernel": "weight", "scale": "weight"}.get(leaf, leaf)
  if len(shape) == 4:
    shape = (shape[3], shape[2], shape[0], shape[1])
  elif len(shape) == 2:
    shape = shape[::-1]
  return ".".join(modules + [leaf]), shape


def _break(source, extra, misshape, delete):
  """A copy of the flat source with `extra` added, `misshape` cut by one on its last axis."""
  broken = dict(source)
  broken[extra] = np.zeros((3,), np.float32)
  broken[misshape] = np.asarray(broken[misshape])[..., :-1]
  del broken[delete]
  return broken


# Each case: () -> (convert(source) callable, complete source, extra key, misshaped key, deleted
# key, the target path of the deleted key).
def _meanflow_official():
  golden = _load("meanflow_official.npz")
  from configs import base  # pylint: disable=import-outside-toplevel
  config = base.get_config()
  config.data.update(image_size=int(golden["tiny_input_size"]),
                     channels=int(golden["tiny_in_channels"]),
                     num_classes=int(golden["tiny_num_classes"]))
  config.model.update(variant=f"S/{int(golden['tiny_patch_size'])}",
                      depth=int(golden["tiny_depth"]), hidden_size=int(golden["tiny_hidden_size"]),
                      num_heads=int(golden["tiny_num_heads"]))
  official = meanflow_official.read_official(os.path.join(GOLDEN, "meanflow_official_ckpt"))
  net = engine.flat(official["params"]["net"])

  def convert(source):
    tree = dict(official, params={"net": engine.nest(source)})
    return meanflow_official.convert(tree, config)
  return (convert, net, "extra_layer/kernel", "x_embedder/proj/kernel",
          "final_layer/linear/_flax_linear/bias", "final_proj/bias")


def _py_meanflow_unet():
  data = np.load(os.path.join(GOLDEN, "unet_tiny.npz"))
  state = {k[len("param:"):]: data[k] for k in data.files if k.startswith("param:")}
  model = SongUNet(image_size=8, channels=3, model_channels=8, channel_mult=(1, 2), num_blocks=1,
                   attn_resolutions=(4,), dropout=0.2, augment_dim=6)
  x, t = jnp.zeros((1, 8, 8, 3)), jnp.zeros((1,))
  expected = jax.eval_shape(lambda k: model.init(k, x, (t, t), None, jnp.zeros((1, 6))),
                            jax.random.key(0))
  return (lambda s: py_meanflow_unet.to_flax(s, expected), state, "extra.weight",
          "enc.8x8_conv.weight", "map_layer0.weight", "map_layer0/kernel")


def _drifting_generator():
  import json  # pylint: disable=import-outside-toplevel
  from mf_jax.models import dit_modern  # pylint: disable=import-outside-toplevel
  golden = _load("drifting_generator_tiny.npz")
  cfg = json.loads(str(golden["config"]))
  model = dit_modern.ModernDiT(
      variant=f"B/{cfg['patch_size']}", image_size=cfg["input_size"], channels=cfg["in_channels"],
      num_classes=cfg["num_classes"], depth=cfg["depth"], hidden_size=cfg["hidden_size"],
      num_heads=cfg["num_heads"], cls_tokens=cfg["n_cls_tokens"],
      noise_classes=cfg["noise_classes"], noise_coords=cfg["noise_coords"])
  target = engine.flat(jax.eval_shape(
      model.init, jax.random.key(0), golden["inputs/x"], (golden["inputs/alpha"],),
      golden["inputs/labels"], golden["inputs/noise_labels"])["params"])
  return (lambda s: drifting_generator.convert_params(s, target), _prefixed(golden, "params/"),
          "extra/w", "LightningDiT_0/blocks_0/RMSNorm_1/weight",
          "LightningDiT_0/blocks_1/Attention_0/q_norm/weight", "block_1/attn/q_norm/scale")


def _drifting_mae():
  params = _prefixed(_load("drifting_mae.npz"), "latent/params/")
  model = mae_resnet.MAEResNet(channels=4, widths=(32, 64, 128, 256), layers=(3, 2, 1, 1),
                               num_classes=10)
  return (lambda s: drifting_mae.convert_mae(s, model, 8), params, "encoder/extra/kernel",
          "decoder/up43/proj/conv/kernel", "encoder/stages_1/layers_0/proj_gn/scale",
          "encoder/stage1_block0/skip_norm/scale")


def _convnext_models():
  golden = _load("drifting_convnext.npz")
  model = convnext.ConvNeXtV2(depths=tuple(golden["config/depths"]),
                              dims=tuple(golden["config/dims"]))
  return golden, model


def _convnext_release():
  golden, model = _convnext_models()
  return (lambda s: convnext_format.convert_convnext(s, model), _prefixed(golden, "params/"),
          "head/kernel", "stages_1/layers_0/pwconv1/kernel", "norm/bias", "head_norm/bias")


def _convnext_hf():
  _, model = _convnext_models()
  target = engine.abstract_params(lambda: model.init(jax.random.key(0), convnext.example_input()))
  state = {}
  for path, s in target.items():
    if path.endswith("/grn/gamma") or path.endswith("/grn/beta"):  # [1, 1, 1, C] in both.
      key = (_torch_layout(path, ())[0].replace("gamma", "weight").replace("beta", "bias"), s.shape)
    else:
      key = _torch_layout(path, s.shape)
    state[key[0]] = np.zeros(key[1], np.float32)
  hf = {}
  for k, v in state.items():  # This project's names -> Hugging Face's.
    k = re.sub(r"^stem_conv\.", "embeddings.patch_embeddings.", k)
    k = re.sub(r"^stem_norm\.", "embeddings.layernorm.", k)
    k = re.sub(r"^down(\d)_norm\.", r"encoder.stages.\1.downsampling_layer.0.", k)
    k = re.sub(r"^down(\d)_conv\.", r"encoder.stages.\1.downsampling_layer.1.", k)
    k = re.sub(r"^stage(\d)_block(\d+)\.norm\.", r"encoder.stages.\1.layers.\2.layernorm.", k)
    k = re.sub(r"^stage(\d)_block(\d+)\.", r"encoder.stages.\1.layers.\2.", k)
    k = re.sub(r"^head_norm\.", "layernorm.", k)
    hf["convnextv2." + k] = v
  hf["classifier.weight"] = np.zeros((5, 4), np.float32)  # Dropped on purpose: no problem.
  return (lambda s: convnext_format.convert_convnext_hf(s, model), hf, "convnextv2.pooler.weight",
          "convnextv2.encoder.stages.0.layers.0.pwconv1.weight",
          "convnextv2.encoder.stages.1.layers.0.grn.bias", "stage1_block0/grn/beta")


def _sd_vae():
  config = vae.VAEConfig(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4)
  state = {}
  for path, s in engine.flat(vae.param_shapes(config)).items():
    key, shape = _torch_layout(path, s.shape)
    state[key] = np.zeros(shape, np.float32)
  return (lambda s: sd_vae.convert_state_dict(s, config), state, "encoder.extra_layer.weight",
          "encoder.conv_in.weight", "decoder.conv_out.bias", "decoder/conv_out/bias")


def _inception():
  # A two-block stand-in for eval.inception.param_shapes(): the table does not depend on depth.
  sds = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  unit = lambda i, o: {"conv": {"kernel": sds(3, 3, i, o)},
                       "bn": {k: sds(o) for k in ("scale", "bias", "mean", "var")}}
  target = {"Conv2d_1a_3x3": unit(3, 4), "Mixed_5b": {"branch1x1": unit(4, 6)},
            "fc_kernel": sds(6, 10), "fc_bias": sds(10)}
  state = {}
  for path, s in engine.flat(target).items():
    key = inception_format.torch_key(tuple(path.split("/")))[0]
    state[key] = np.zeros(_torch_layout(path, s.shape)[1], np.float32)
  state["Mixed_5b.branch1x1.bn.num_batches_tracked"] = np.zeros((), np.int64)  # Dropped.
  return (lambda s: inception_format.torch_state_dict_to_flax(s, target), state,
          "AuxLogits.fc.weight", "Mixed_5b.branch1x1.conv.weight", "fc.bias", "fc_bias")


def _lpips_vgg16():
  """torchvision features indices of VGG16 (conv at 0, 2 | 5, 7 | 10, 12, 14 | ...) and lpips's
  lin keys, built from a narrow LPIPS's shapes; the lin2 key is the one deleted."""
  module = lpips.LPIPS(widths=(4, 4, 8, 8, 8))
  index = {f"conv{b}_{l}": i for i, (b, l) in enumerate(
      (b, l) for b, d in enumerate(lpips.VGG16_DEPTHS, 1) for l in range(1, d + 1))}
  state = {}
  for path, s in lpips_vgg16.target(module).items():
    _, shape = _torch_layout(path, s.shape)
    if path.startswith("vgg/"):
      _, conv, leaf = path.split("/")
      b = int(conv[4]) - 1  # Each block adds a pool: index = 2 x (convs before) + blocks before.
      key = f"features.{2 * index[conv] + b}.{'weight' if leaf == 'kernel' else 'bias'}"
    else:
      key = f"{path.split('/')[0]}.model.1.weight"
    state[key] = np.zeros(shape, np.float32)
  state["classifier.6.weight"] = np.zeros((5, 4), np.float32)  # Dropped on purpose: no problem.
  return (lambda s: lpips_vgg16.convert_state_dict(s, module), state, "lin5.model.1.weight",
          "features.10.weight", "lin2.model.1.weight", "lin2/kernel")


def _imf_official(torch: bool):
  """The golden tiny official iMF network below net/ (JAX release names), or as the PyTorch
  branch's state dict (names and layouts written independently in tests/test_imf_convert.py)."""
  import test_imf_convert as imf_case  # pylint: disable=import-outside-toplevel
  golden = _load("imf_official.npz")
  target = imf_official.target_params(imf_case.tiny_config(golden))
  net = imf_case.official_net(golden)
  if not torch:
    return (lambda s: imf_official.convert_params(s, target), net, "extra_layer/kernel",
            "x_embedder/proj/kernel", "u_final_layer/linear/_flax_linear/bias", "u_final/bias")
  state = {imf_case.torch_key(k): imf_case.torch_layout(k, v) for k, v in net.items()}
  return (lambda s: imf_official.convert_params(s, target, imf_official.TORCH_RULES), state,
          "net.extra.weight", "net.x_embedder.proj.weight",
          "net.u_final_layer.linear._flax_linear.bias", "u_final/bias")


CASES = {"meanflow_official": _meanflow_official,
         "imf_official_orbax": lambda: _imf_official(False),
         "imf_official_torch": lambda: _imf_official(True), "py_meanflow_unet": _py_meanflow_unet,
         "drifting_generator": _drifting_generator, "drifting_mae": _drifting_mae,
         "convnext_release": _convnext_release, "convnext_hf": _convnext_hf, "sd_vae": _sd_vae,
         "inception": _inception, "lpips_vgg16": _lpips_vgg16}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_format_reports_unmapped_misshaped_and_missing_in_one_error(name):
  convert, source, extra, misshape, delete, deleted_target = CASES[name]()
  convert(source)  # Complete: converts without a problem.
  with pytest.raises(engine.ConversionError) as e:
    convert(_break(source, extra, misshape, delete))
  problems = e.value.problems
  assert len(problems) == 3, problems
  kinds = {p.split(":")[0]: p for p in problems}
  assert set(kinds) == {"unmapped", "misshaped", "missing"}, problems
  assert re.match(rf"unmapped: (params/net/)?{re.escape(extra)} \(3,\)", kinds["unmapped"])
  want_shape = tuple(np.shape(source[misshape])[:-1]) + (np.shape(source[misshape])[-1] - 1,)
  assert re.match(rf"misshaped: (params/net/)?{re.escape(misshape)} "
                  rf"{re.escape(str(want_shape))} -> ", kinds["misshaped"])
  assert kinds["missing"].startswith(f"missing: {deleted_target} ")
  assert "3 problem(s)" in str(e.value)


def test_engine_layouts_and_alternative_targets():
  """PyTorch conv OIHW -> HWIO and linear [out, in] -> [in, out]; 'a|b' takes the one present."""
  table = engine.rules((r"(\w+)\.weight", r"\1/kernel|\1/scale", "torch"),
                       (r"(\w+)\.bias", r"\1/bias"))
  target = {"conv/kernel": (3, 2, 5, 4), "dense/kernel": (5, 4), "norm/scale": (4,),
            "norm/bias": (4,)}
  w = np.arange(4 * 5 * 3 * 2, dtype=np.float32).reshape(4, 5, 3, 2)
  d = np.arange(20, dtype=np.float32).reshape(4, 5)
  out = engine.convert({"conv.weight": w, "dense.weight": d, "norm.weight": np.ones(4),
                        "norm.bias": np.zeros(4)}, table, target)
  np.testing.assert_array_equal(out["conv/kernel"][1, 0, 2, 3], w[3, 2, 1, 0])
  np.testing.assert_array_equal(out["dense/kernel"], d.T)
  np.testing.assert_array_equal(out["norm/scale"], np.ones(4))


def test_npz_shapes_reads_headers_and_names_a_damaged_file(tmp_path):
  path = str(tmp_path / "w.npz")
  np.savez(path, a=np.zeros((2, 3), np.float32), b=np.zeros((4,), np.float32))
  assert readers.npz_shapes(path) == {"a": (2, 3), "b": (4,)}
  with open(path, "wb") as f:
    f.write(b"garbage")
  with pytest.raises(engine.SourceError, match=re.escape(path) + ": is not a readable .npz"):
    readers.npz_shapes(path)


def _cli(argv, capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["prog", *argv])
  return e.value.code, capsys.readouterr().err


def test_cli_lists_every_problem_and_names_files(tmp_path, capsys):
  """Bad input: exit 2, one `tool: error: <file or flag>: ...` line (plus the problem list)."""
  convert, source, extra, misshape, delete, _ = _inception()
  del convert
  broken = str(tmp_path / "broken.npz")
  np.savez(broken, **_break(source, extra, misshape, delete))
  code, err = _cli(["inception", f"--src={broken}", f"--out={tmp_path / 'x.npz'}", "--sha256="],
                   capsys)
  # The real Inception's 300 missing parameters are reported too: all in one error.
  assert code == 2 and err.startswith(f"python -m mf_jax.convert: error: {broken}: the state dict")
  assert f"unmapped: {extra}" in err and f"misshaped: {misshape}" in err and "Fix: " in err
  assert "missing: Mixed_7c/branch_pool/conv/kernel" in err

  empty = tmp_path / "checkpoint_5"
  empty.write_bytes(b"")
  code, err = _cli(["meanflow_official", f"--src={empty}", f"--workdir={tmp_path / 'w'}",
                    f"--config={ROOT}/configs/imagenet_b4.py"], capsys)
  assert (code, err) == (2, f"python -m mf_jax.convert: error: {empty}: is empty (a flax msgpack "
                            "file; an interrupted copy?). Fix: give the checkpoint file itself\n")
  assert not (tmp_path / "w").exists()

  code, err = _cli(["no_such_format", "--src=x", "--out=y"], capsys)
  assert code == 2 and "error: SOURCE: got no_such_format; expected one of meanflow_official" in err


def test_old_entry_point_names_a_missing_file_before_asking_for_torch(tmp_path):
  """`python -m mf_jax.convert.cifar_unet_torch --checkpoint=/nope.pth`: the file, exit 2, no
  traceback, even where torch is not installed (torch is blocked in the child)."""
  nope = str(tmp_path / "nope.pth")
  code = ("import sys; sys.modules['torch'] = None; import runpy; "
          "sys.argv = ['x', '--checkpoint=" + nope + "', '--workdir=" + str(tmp_path / "w") + "']; "
          "runpy.run_module('mf_jax.convert.cifar_unet_torch', run_name='__main__')")
  run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu"))
  assert run.returncode == 2, run.stderr
  assert run.stderr == (f"python -m mf_jax.convert.cifar_unet_torch: error: {nope}: does not "
                        "exist (a PyTorch checkpoint). Fix: give the .pth/.bin file\n")


def test_cli_checks_a_vae_and_writes_float32_safetensors_that_load_alike(tmp_path, capsys):
  """sd_vae: a diffusers folder (config.json + .safetensors) -> a checked float32 .safetensors
  whose parameters equal those of the folder itself (same keys, same numbers)."""
  import json  # pylint: disable=import-outside-toplevel
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  _, state, *_ = _sd_vae()
  rng = np.random.RandomState(0)
  state = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in state.items()}
  folder = tmp_path / "vae"
  folder.mkdir()
  save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))
  (folder / "config.json").write_text(json.dumps(
      {"block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4}))
  out = str(tmp_path / "out" / "vae.safetensors")
  cli.main(["prog", "sd_vae", f"--src={folder}", f"--out={out}"])
  assert "converted VAE" in capsys.readouterr().out
  config, want, _ = sd_vae.load_vae(str(folder))
  _, got, _ = sd_vae.load_vae(out, config=config)
  assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
  jax.tree_util.tree_map(np.testing.assert_array_equal, got, want)
  np.testing.assert_array_equal(np.asarray(got["encoder"]["conv_in"]["kernel"]),
                                state["encoder.conv_in.weight"].transpose(2, 3, 1, 0))
