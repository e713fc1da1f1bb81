"""LPIPS-VGG16 (mf_jax/models/lpips.py) against the `lpips` package's own PyTorch code, through the
converter (mf_jax/convert/formats/lpips_vgg16.py).

The reference is lpips==0.1.4 (installed with --no-deps, README's test command): its scaling layer,
its vgg16 slices of torchvision's `features`, its channel normalisation, its v0.1 linear layers
(the weights file it ships) and its spatial average. torchvision itself cannot be installed beside
this torch, so a stand-in `torchvision.models.vgg16` returns a VGG16 `features` Sequential built
here from torchvision's layer list (conv 3x3 pad 1, ReLU, max pool 2; cfg "D"), holding random
He-initialised weights that are also saved as a torchvision-style state dict and converted by the
project's converter. Images are 32 x 48 (not square: a swapped H/W would show).
"""
import importlib.util
import os
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from mf_jax.convert import __main__ as cli
from mf_jax.convert import engine
from mf_jax.convert.formats import lpips_vgg16
from mf_jax.models import lpips as lpips_model
import numerics

VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
             512, 512, 512, "M")  # torchvision's cfgs["D"].


def _features_sequential():
  layers, c_in = [], 3
  for v in VGG16_CFG:
    if v == "M":
      layers.append(torch.nn.MaxPool2d(kernel_size=2, stride=2))
    else:
      layers += [torch.nn.Conv2d(c_in, v, kernel_size=3, padding=1), torch.nn.ReLU(inplace=True)]
      c_in = v
  return torch.nn.Sequential(*layers)


def _random_vgg_state(seed=0):
  """torchvision-style VGG16 state dict (float32, He init, small biases) plus classifier keys."""
  rng = np.random.default_rng(seed)
  state = {}
  for name, p in _features_sequential().state_dict().items():
    if name.endswith("weight"):
      fan_in = int(np.prod(p.shape[1:]))
      a = rng.normal(0.0, np.sqrt(2.0 / fan_in), p.shape)
    else:
      a = rng.normal(0.0, 0.05, p.shape)
    state["features." + name] = torch.tensor(a.astype(np.float32))
  state["classifier.0.weight"] = torch.zeros(7, 5)  # Present in vgg16-397923af.pth; unused.
  state["classifier.0.bias"] = torch.zeros(7)
  return state


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp("lpips")
  vgg_state = _random_vgg_state()
  torch.save(vgg_state, d / "vgg16.pth")
  rng = np.random.default_rng(1)
  random_lin = {f"lin{i}.model.1.weight": torch.tensor(
      rng.uniform(0.0, 1.0, (1, c, 1, 1)).astype(np.float32))
      for i, c in enumerate(lpips_model.VGG16_WIDTHS)}
  torch.save(random_lin, d / "random_lin.pth")
  return {"dir": d, "vgg_state": vgg_state, "vgg": str(d / "vgg16.pth"),
          "random_lin": str(d / "random_lin.pth")}


@pytest.fixture(scope="module")
def lpips_package(files):
  """The lpips package, imported with the torchvision stand-in (which loads our random VGG)."""
  assert importlib.util.find_spec("lpips") is not None, (
      "the lpips package is the reference: pip install --no-deps lpips==0.1.4 (README's test command)")
  def vgg16(**unused_kwargs):
    features = _features_sequential()
    features.load_state_dict({k[len("features."):]: v for k, v in files["vgg_state"].items()
                              if k.startswith("features.")})
    return types.SimpleNamespace(features=features)

  models = types.ModuleType("torchvision.models")
  models.vgg16 = vgg16
  tv = types.ModuleType("torchvision")
  tv.models = models
  saved = {k: sys.modules.get(k) for k in ("torchvision", "torchvision.models")}
  sys.modules.update({"torchvision": tv, "torchvision.models": models})
  try:
    import lpips  # pylint: disable=g-import-not-at-top
    yield lpips
  finally:
    for k, v in saved.items():
      if v is None:
        sys.modules.pop(k, None)
      else:
        sys.modules[k] = v


def _shipped_lin(lpips):
  return os.path.join(os.path.dirname(lpips.__file__), "weights", "v0.1", "vgg.pth")


def _reference(lpips, lin_path, dtype):
  """lpips.LPIPS(net='vgg') with its own v0.1 weights (or lin_path's), in dtype; the scaling
  constants are set in dtype from their decimal values (they are float32 buffers)."""
  ref = lpips.LPIPS(net="vgg", verbose=False).to(dtype)
  ref.load_state_dict(torch.load(lin_path, map_location="cpu"), strict=False)
  with torch.no_grad():
    ref.scaling_layer.shift.copy_(torch.tensor([-.030, -.088, -.188], dtype=dtype).view(1, 3, 1, 1))
    ref.scaling_layer.scale.copy_(torch.tensor([.458, .448, .450], dtype=dtype).view(1, 3, 1, 1))
  return lambda a, b: ref(torch.tensor(a.transpose(0, 3, 1, 2)),
                          torch.tensor(b.transpose(0, 3, 1, 2))).detach().numpy().reshape(-1)


def _images(n=2, seed=2):
  rng = np.random.default_rng(seed)
  a = rng.uniform(-1, 1, (n, 32, 48, 3))
  b = np.clip(a + rng.normal(0, 0.3, a.shape), -1, 1)  # Related pairs: distances well inside (0, 1).
  return a, b


def _ours(files, lin_path, dtype):
  """(jitted LPIPS(dtype) of (variables, a, b), variables converted from the files via .npz)."""
  out = str(files["dir"] / (os.path.basename(lin_path) + ".npz"))
  lpips_vgg16.convert_to_file(files["vgg"], lin_path, out)
  variables = lpips_vgg16.load_variables(out, lpips_model.LPIPS())
  module = lpips_model.LPIPS(dtype=dtype)
  # Variables as arguments, not closure constants: XLA would fold 15M constants into the program.
  return (jax.jit(module.apply),
          jax.tree_util.tree_map(lambda v: jnp.asarray(v, dtype), variables))


def test_parity_with_the_lpips_package_in_float64(files, lpips_package, x64):
  """The shipped v0.1 linear weights, then random ones, on the same random VGG16."""
  a, b = _images()
  for lin_path in (_shipped_lin(lpips_package), files["random_lin"]):
    want = _reference(lpips_package, lin_path, torch.float64)(a, b)
    apply, variables = _ours(files, lin_path, jnp.float64)
    got = np.asarray(apply(variables, a, b))
    assert got.shape == (2,)
    assert 1e-3 < want.min() and want.max() < 10, want  # A meaningful, unsaturated distance.
    # Same mathematics in float64: rounding (1e-16) x 13 layers is far below 1e-10.
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=0)
  # Identical images: distance 0 up to the rows' float64 rounding, squared (~1e-32).
  assert np.all(np.abs(np.asarray(apply(variables, a, a))) < 1e-20)


def test_float32_is_as_accurate_as_the_lpips_package(files, lpips_package):
  lin_path = _shipped_lin(lpips_package)
  a, b = _images(seed=3)
  truth = _reference(lpips_package, lin_path, torch.float64)(a, b)
  baseline = _reference(lpips_package, lin_path, torch.float32)(a.astype(np.float32),
                                                                 b.astype(np.float32))
  apply, variables = _ours(files, lin_path, jnp.float32)
  got = apply(variables, jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
  assert got.dtype == jnp.float32
  numerics.assert_as_accurate(np.asarray(got), baseline, truth, what="float32 LPIPS")


def test_gradient_is_finite_where_a_layer_is_all_zero():
  """Where a layer's ReLU features are all zero, the channel norm's derivative is infinite; the
  ReLU's select keeps it out of the input gradient (jnp.maximum would pass NaN)."""
  module = lpips_model.LPIPS(widths=(4, 4, 4, 4, 4))
  params = jax.jit(module.init)(jax.random.key(0), *lpips_model.example_inputs(16))["params"]
  params["vgg"]["conv5_3"]["bias"] = jnp.full((4,), -1e3)  # relu5_3 = 0 everywhere.
  a, b = (jnp.asarray(x[:, :16, :16], jnp.float32) for x in _images(n=1))
  grad = np.asarray(jax.jit(jax.grad(lambda p, x: module.apply({"params": p}, x, b)[0], 1))(
      params, a))
  assert np.all(np.isfinite(grad))
  assert np.any(grad != 0)  # Layers 1-4 still depend on the input.


def test_the_converter_reads_the_shipped_linear_weights(lpips_package, files):
  state = lpips_vgg16.read_sources(files["vgg"], _shipped_lin(lpips_package))
  variables = lpips_vgg16.convert_state_dict(state, lpips_model.LPIPS())
  shipped = torch.load(_shipped_lin(lpips_package), map_location="cpu")
  assert sorted(shipped) == [f"lin{i}.model.1.weight" for i in range(5)]
  for i, c in enumerate(lpips_model.VGG16_WIDTHS):
    np.testing.assert_array_equal(variables["params"][f"lin{i}"]["kernel"][0, 0, :, 0],
                                  shipped[f"lin{i}.model.1.weight"].numpy().reshape(c))
  # torchvision OIHW -> HWIO, and features.28 is conv5_3.
  np.testing.assert_array_equal(variables["params"]["vgg"]["conv5_3"]["kernel"],
                                files["vgg_state"]["features.28.weight"].numpy().transpose(2, 3, 1, 0))


def _cli(argv, capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["prog", "lpips_vgg16", *argv])
  return e.value.code, capsys.readouterr().err


def test_cli_writes_a_file_the_frozen_network_loads_and_reports_bad_input(files, lpips_package,
                                                                         tmp_path, capsys):
  out = tmp_path / "lpips.npz"
  cli.main(["prog", "lpips_vgg16", f"--src={files['vgg']}",
            f"--lin={_shipped_lin(lpips_package)}", f"--out={out}"])
  assert "converted LPIPS VGG16" in capsys.readouterr().out
  assert lpips_vgg16.file_problems(str(out), lpips_model.LPIPS()) == ""
  # A file of another size: every problem named, before training starts.
  other = lpips_model.LPIPS(widths=(64, 128, 256, 512, 256))
  problems = lpips_vgg16.file_problems(str(out), other)
  assert "misshaped: vgg/conv5_1/kernel" in problems and "lin4/kernel" in problems, problems
  with pytest.raises(engine.SourceError, match="misshaped"):
    lpips_vgg16.load_variables(str(out), other)
  # --lin forgotten; the same file twice; a missing file: exit 2, one line, nothing written.
  bad = f"--out={tmp_path / 'x.npz'}"
  code, err = _cli([f"--src={files['vgg']}", bad], capsys)
  assert code == 2 and "error: --lin: is required for lpips_vgg16" in err, err
  code, err = _cli([f"--src={files['vgg']}", f"--lin={files['vgg']}", bad], capsys)
  assert code == 2 and "repeats keys" in err, err
  code, err = _cli([f"--src={files['vgg']}", f"--lin={files['dir'] / 'missing.pth'}", bad], capsys)
  assert code == 2 and "missing.pth: does not exist" in err, err
  # The lpips weights as --src, the VGG as --lin is caught as a repeat; the lin file alone as both
  # trunk and lin (a VGG16 without features) lists every missing conv in one error.
  torch.save({}, tmp_path / "empty.pth")
  code, err = _cli([f"--src={tmp_path / 'empty.pth'}", f"--lin={_shipped_lin(lpips_package)}",
                    bad], capsys)
  assert code == 2 and "26 problem(s)" in err and "missing: vgg/conv5_3/kernel" in err, err
  assert not (tmp_path / "x.npz").exists()
