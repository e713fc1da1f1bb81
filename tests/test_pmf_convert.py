"""The pMF release converter (mf_jax/convert/formats/pmf_official.py) on the golden tiny network.

The source is the official tiny pmfDiT of tests/golden/pmf_network.npz
(scripts/make_pmf_network_golden.py), stored the way the JAX release stores it (an Orbax
`checkpoint_<step>` folder of a flax TrainState whose EMAs are `ema_params/<half-life kimg>/net`)
and the way the PyTorch branch does (a .pt state dict with its module names, PyTorch layouts and
the rotary buffer). The converted parameters run
through mf_jax.models.dit_pixel must give the official images: same tolerance as
tests/test_pmf_network.py (1e-5 relative; a wrong name or layout is O(1)).
"""
import importlib.util
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util

from configs import imf_digits
from mf_jax.convert import engine
from mf_jax.convert.formats import pmf_official
from mf_jax.objectives import pmf as pmf_objective
import golden_files
from numerics import rel_err

RTOL = 1e-5
STEP = 11
# The release's EMAs: each a power-of-two multiple of the golden weights (exact in float32), so
# which release EMA landed in which copy shows exactly; 1000 kimg holds the golden weights.
SCALES = {"500": 0.5, "1000": 1.0, "2000": 2.0}


@pytest.fixture(scope="module")
def golden():
  return golden_files.load("pmf_network.npz")


def official_net(golden):
  """{official name below net/: array} of the golden tiny network."""
  return {k[len("param/"):]: v for k, v in golden.items() if k.startswith("param/")}


def tiny_config(golden, half_lives=None):
  g = lambda k: int(golden[f"tiny_{k}"])
  config = imf_digits.get_config()
  config.data.update(image_size=g("input_size"), channels=g("in_channels"),
                     num_classes=int(golden["num_classes"]))
  config.model.update(name="dit_pixel", variant=f"B/{g('patch_size')}", depth=g("depth"),
                      hidden_size=g("hidden_size"), num_heads=g("num_heads"),
                      head_depth=g("aux_head_depth"))
  if half_lives is not None:
    with config.unlocked():
      config.ema_half_lives_kimg = half_lives
  return config


def torch_key(name: str) -> str:
  """An official JAX name -> the PyTorch branch's state dict key (its models/pmfDiT.py module
  names: nn.Sequential and ModuleList indices, `weight` for Linear/RMSNorm/Embedding/Conv2d),
  written here from the official torch models independently of the converter's table."""
  name = re.sub(r"mlp/layers_(\d)", r"mlp/\1", name)
  name = re.sub(r"^(shared_blocks|u_heads|v_heads)_(\d+)", r"\1/\2", name)
  name = name.replace("embedding_table/embedding", "embedding_table/_flax_embedding/weight")
  name = re.sub(r"kernel$", "weight", name)
  return "net." + name.replace("/", ".")


def torch_layout(name, array):
  """Flax layout -> PyTorch's: conv HWIO -> OIHW, Linear kernel [in, out] -> weight [out, in],
  the label table [1, n, w] -> nn.Embedding's [n, w]; tokens and pos_embed [1, n, w] as they are."""
  a = np.asarray(array)
  if a.ndim == 4:
    return a.transpose(3, 2, 0, 1)
  if "embedding_table" in name:
    return a[0]
  return a.T if "_flax_linear" in name and a.ndim == 2 else a


def write_orbax_release(folder, emas, online):
  """A release folder as the official trainer writes it: <folder>/checkpoint_<step> (Orbax)."""
  nest = lambda t: traverse_util.unflatten_dict(t, sep="/")
  tree = {"step": np.int32(STEP), "params": {"net": nest(online)},
          "ema_params": {k: {"net": nest(v)} for k, v in emas.items()},
          "opt_state": {"count": np.int32(STEP)}}
  ocp.PyTreeCheckpointer().save(os.path.join(folder, f"checkpoint_{STEP}"), tree)
  return str(folder)


def torch_state(net):
  """The golden network as the PyTorch branch's pixelMeanFlow.state_dict() holds it (`net.`
  keys), with its registered buffer: the complex 2-D rotary table [patches, head_dim / 2]."""
  import torch  # pylint: disable=import-outside-toplevel
  state = {torch_key(k): torch.from_numpy(np.ascontiguousarray(torch_layout(k, v)))
           for k, v in net.items()}
  head_dim = net["shared_blocks_0/attn/q_norm/kernel"].size
  patches = (int(net["pos_embed"].shape[1]) - 20, head_dim // 2)
  state["net.rope_freqs"] = torch.polar(torch.ones(patches), torch.rand(patches))
  return state


def write_torch_release(path, net):
  import torch  # pylint: disable=import-outside-toplevel
  torch.save(torch_state(net), path)
  return str(path)


def test_torch_names_are_the_official_modules(golden):
  """The .pt written here has exactly the keys and shapes of the official PyTorch pmfDiT's
  state dict (recorded in the golden file from the torch branch), under pixelMeanFlow's `net.`."""
  state = torch_state(official_net(golden))
  assert sorted(f"{k} {tuple(v.shape)}" for k, v in state.items()) == sorted(
      f"net.{line}" for line in golden["torch_state"])


@pytest.fixture(scope="module")
def releases(golden, tmp_path_factory):
  net = official_net(golden)
  scaled = {k: {n: s * v for n, v in net.items()} for k, s in SCALES.items()}
  inference = {k: v for k, v in net.items() if not k.startswith(("v_heads_", "v_final_layer"))}
  return {
      "full": write_orbax_release(tmp_path_factory.mktemp("full"), scaled,
                                  {k: v + 1.0 for k, v in net.items()}),  # Online: never used.
      "inference": write_orbax_release(tmp_path_factory.mktemp("inf"), {"2000": inference},
                                       inference),
      "torch": write_torch_release(tmp_path_factory.mktemp("pt") / "pMF-tiny.pt", net),
  }


def convert(path, config):
  copies, step, kind = pmf_official.read_release(path)
  flats, note = pmf_official.convert_copies(copies, kind, config,
                                            pmf_official.target_params(config))
  return [engine.nest(f) for f in flats], step, note


def images(golden, config, params):
  """(x_u, x_v) of the converted parameters on the golden inputs."""
  inputs = [jnp.asarray(golden[f"net_{k}"]) for k in ("z", "h", "omega", "t_min", "t_max", "y")]
  return jax.jit(pmf_objective.build_pixel_dit(config).apply)({"params": params}, *inputs)


def test_jax_release_ema_copies_in_half_life_order(golden, releases):
  config = tiny_config(golden, half_lives=(2000.0, 1000.0))  # Order by config, not by release.
  emas, step, note = convert(releases["full"], config)
  assert step == STEP and len(emas) == 2 and "2000, 1000 kimg" in note and "filled" not in note
  x_u, x_v = images(golden, config, emas[1])
  assert rel_err(x_u, golden["net_x_u"]) < RTOL and rel_err(x_v, golden["net_x_v"]) < RTOL
  for a, b in zip(jax.tree_util.tree_leaves(emas[0]), jax.tree_util.tree_leaves(emas[1])):
    np.testing.assert_array_equal(a, 2.0 * b)

  emas, _, _ = convert(releases["full"], tiny_config(golden))  # Default: (500, 1000, 2000).
  assert len(emas) == 3
  for a, b in zip(jax.tree_util.tree_leaves(emas[0]), jax.tree_util.tree_leaves(emas[1])):
    np.testing.assert_array_equal(a, 0.5 * b)


def test_inference_release_fills_the_v_head(golden, releases):
  config = tiny_config(golden, half_lives=(2000.0,))
  (params,), _, note = convert(releases["inference"], config)
  assert "filled with zeros" in note
  x_u, x_v = images(golden, config, params)
  assert rel_err(x_u, golden["net_x_u"]) < RTOL
  assert not np.any(x_v)  # As the official eval model's v image.

  with pytest.raises(engine.UserError, match="ema_half_lives_kimg.*lacks"):
    convert(releases["inference"], tiny_config(golden))


def test_torch_state_dict(golden, releases):
  config = tiny_config(golden)
  emas, step, note = convert(releases["torch"], config)
  assert step == 0 and len(emas) == 3 and "every EMA copy" in note
  for ema in emas[1:]:
    for a, b in zip(jax.tree_util.tree_leaves(ema), jax.tree_util.tree_leaves(emas[0])):
      np.testing.assert_array_equal(a, b)
  x_u, x_v = images(golden, config, emas[0])
  assert rel_err(x_u, golden["net_x_u"]) < RTOL and rel_err(x_v, golden["net_x_v"]) < RTOL


def test_wrong_size_lists_every_problem(golden, releases):
  config = tiny_config(golden)
  config.model.hidden_size = 32
  with pytest.raises(engine.ConversionError) as e:
    convert(releases["torch"], config)
  assert "misshaped: net.pos_embed" in str(e.value) and "B/2" in str(e.value)


def test_cli_refuses_another_network_and_a_missing_source(releases, tmp_path, capsys):
  from mf_jax.convert import __main__ as cli  # pylint: disable=import-outside-toplevel
  with pytest.raises(SystemExit) as e:
    cli.main(["convert", "pmf_official", f"--src={tmp_path}/absent", f"--workdir={tmp_path}/w",
              "--config=configs/imf_digits.py"])
  assert e.value.code == 2
  assert f"error: {tmp_path}/absent: does not exist" in capsys.readouterr().err
  with pytest.raises(SystemExit) as e:
    cli.main(["convert", "pmf_official", f"--src={releases['full']}", f"--workdir={tmp_path}/w",
              "--config=configs/imf_digits.py"])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert "error: --config: model.name='dit_incontext'" in err and "Traceback" not in err


def test_cli_workdir_holds_the_release(golden, releases, tmp_path):
  """Through the CLI into a workdir of the pMF objective, restored as --mode=eval restores it:
  the EMA copies by half-life, the parameters = the copy eval.ema_index names."""
  from mf_jax import train  # pylint: disable=import-outside-toplevel
  from mf_jax.convert import __main__ as cli  # pylint: disable=import-outside-toplevel
  g = lambda k: int(golden[f"tiny_{k}"])
  config_file = tmp_path / "pmf_tiny.py"
  config_file.write_text(
      "from configs import pmf_digits\n\n\ndef get_config():\n"
      "  config = pmf_digits.get_config()\n"
      f"  config.data.update(image_size={g('input_size')}, channels={g('in_channels')}, "
      f"num_classes={int(golden['num_classes'])})\n"
      f"  config.model.update(variant='B/{g('patch_size')}', depth={g('depth')}, "
      f"hidden_size={g('hidden_size')}, num_heads={g('num_heads')}, "
      f"head_depth={g('aux_head_depth')})\n"
      "  config.ema_decays = ()\n  config.ema_half_lives_kimg = (500.0, 1000.0, 2000.0)\n"
      "  config.eval.ema_index = 1\n  config.sample.ema_index = 1\n  return config\n")
  workdir = str(tmp_path / "workdir")
  summary = cli.run(["convert", "pmf_official", f"--src={releases['full']}",
                     f"--workdir={workdir}", f"--config={config_file}"])
  assert "EMA copies 500, 1000, 2000 kimg" in summary and "EMA copy 1" in summary, summary
  spec = importlib.util.spec_from_file_location("pmf_tiny", config_file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  state, _, model = train.restore_trained(config, workdir, "sample")
  assert int(state.step) == STEP and len(state.ema_params) == 3
  for scale, copy in zip((0.5, 1.0, 2.0), state.ema_params):
    for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(copy)),
                    jax.tree_util.tree_leaves(jax.device_get(state.params))):
      np.testing.assert_array_equal(a, scale * b)
  inputs = [jnp.asarray(golden[f"net_{k}"]) for k in ("z", "h", "omega", "t_min", "t_max", "y")]
  x_u, x_v = jax.jit(model.apply)(jax.device_get(state.params), *inputs)
  assert rel_err(x_u, golden["net_x_u"]) < RTOL and rel_err(x_v, golden["net_x_v"]) < RTOL
