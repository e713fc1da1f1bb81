"""The iMF release converter (mf_jax/convert/formats/imf_official.py) through the CLI.

The source is the golden file's tiny official imfDiT (tests/golden/imf_official.npz, written by
scripts/make_imf_golden.py from the official code), stored the way the JAX release stores it (an
Orbax `checkpoint_<step>` folder of a flax TrainState {step, params, ema_params, opt_state}) and the
way the PyTorch branch stores it (a .pth state dict, module names of its models/imfDiT.py, PyTorch
layouts). The converted workdir is restored as --mode=sample restores it, and its sampler must give
the official 1- and 2-NFE samples: same tolerance as tests/test_imf_golden.py (1e-5 relative, both
sides float32 with the same operations in a different order; a wrong name or layout is O(1)).
"""
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util

from configs import imf_digits
from mf_jax import generate, imf_params, train
from mf_jax.convert import __main__ as cli
from mf_jax.convert import engine
from mf_jax.convert.formats import imf_official
import golden_files
from numerics import rel_err

RTOL = 1e-5
STEP = 7


@pytest.fixture(scope="module")
def golden():
  return golden_files.load("imf_official.npz")


def official_net(golden):
  """{official name below net/: array} of the golden tiny network."""
  return {k[len("param/"):]: v for k, v in golden.items() if k.startswith("param/")}


def tiny_config(golden):
  g = lambda k: int(golden[f"tiny_{k}"])
  config = imf_digits.get_config()
  config.data.update(image_size=g("input_size"), channels=g("in_channels"),
                     num_classes=int(golden["num_classes"]))
  config.model.update(variant=f"B/{g('patch_size')}", depth=g("depth"),
                      hidden_size=g("hidden_size"), num_heads=g("num_heads"),
                      head_depth=g("aux_head_depth"))
  config.ema_decays = (0.999, 0.9999)  # Two copies: every one must hold the release's EMA.
  return config


def torch_key(name: str) -> str:
  """An official JAX name -> the PyTorch branch's state dict key (its module names: nn.Sequential
  indices, ModuleList indices, `weight` for Linear/RMSNorm/Embedding/Conv2d), written here from the
  official torch models independently of the converter's table."""
  name = re.sub(r"mlp/layers_(\d)", r"mlp/\1", name)
  name = re.sub(r"^(shared_blocks|u_heads|v_heads)_(\d+)", r"\1/\2", name)
  name = re.sub(r"(kernel|embedding)$", "weight", name)
  return "net." + name.replace("/", ".")


def torch_layout(name, array):
  """Flax layout -> PyTorch's: conv HWIO -> OIHW, Linear kernel [in, out] -> weight [out, in];
  tokens [n, width] and the embedding table [classes + 1, width] are the same in both."""
  a = np.asarray(array)
  if a.ndim == 4:
    return a.transpose(3, 2, 0, 1)
  return a.T if "_flax_linear" in name and a.ndim == 2 else a


def write_orbax_release(folder, net, online):
  """A release folder as the official trainer writes it: <folder>/checkpoint_<step> (Orbax)."""
  nest = traverse_util.unflatten_dict
  tree = {"step": np.int32(STEP), "params": {"net": nest(online, sep="/")},
          "ema_params": {"net": nest(net, sep="/")},
          "opt_state": {"0": {"count": np.int32(STEP)}}}
  ocp.PyTreeCheckpointer().save(os.path.join(folder, f"checkpoint_{STEP}"), tree)
  return str(folder)


@pytest.fixture(scope="module")
def config_file(golden, tmp_path_factory):
  """tiny_config as a config file for the CLI's --config."""
  path = tmp_path_factory.mktemp("config") / "imf_tiny.py"
  path.write_text("from configs import imf_digits\n\n\ndef get_config():\n"
                  "  config = imf_digits.get_config()\n"
                  f"  config.data.update(image_size={int(golden['tiny_input_size'])}, "
                  f"channels={int(golden['tiny_in_channels'])}, "
                  f"num_classes={int(golden['num_classes'])})\n"
                  f"  config.model.update(variant='B/{int(golden['tiny_patch_size'])}', "
                  f"depth={int(golden['tiny_depth'])}, "
                  f"hidden_size={int(golden['tiny_hidden_size'])}, "
                  f"num_heads={int(golden['tiny_num_heads'])}, "
                  f"head_depth={int(golden['tiny_aux_head_depth'])})\n"
                  "  config.ema_decays = (0.999, 0.9999)\n  return config\n")
  return str(path)


def run_cli(src, workdir, config):
  return cli.run(["convert", "imf_official", f"--src={src}", f"--workdir={workdir}",
                  f"--config={config}"])


@pytest.fixture(scope="module")
def converted(golden, config_file, tmp_path_factory):
  """{kind: (state, mesh, model, summary)} for the full JAX release, its inference form (no v-head
  blocks) and the PyTorch state dict, each converted by the CLI and restored."""
  import torch  # pylint: disable=import-outside-toplevel
  config = tiny_config(golden)
  net = official_net(golden)
  online = {k: v + 1.0 for k, v in net.items()}  # Not the EMA: must not reach the workdir.
  inference = {k: v for k, v in net.items() if not k.startswith("v_heads_")}
  sources = {
      "full": write_orbax_release(tmp_path_factory.mktemp("full"), net, online),
      "inference": write_orbax_release(tmp_path_factory.mktemp("inf"), inference,
                                       {k: online[k] for k in inference}),
  }
  pth = str(tmp_path_factory.mktemp("torch") / "iMF-tiny.pth")
  torch.save({torch_key(k): torch.from_numpy(np.ascontiguousarray(torch_layout(k, v)))
              for k, v in inference.items()}, pth)
  sources["torch"] = pth
  out = {}
  for kind, src in sources.items():
    workdir = str(tmp_path_factory.mktemp(f"workdir_{kind}"))
    summary = run_cli(src, workdir, config_file)
    state, mesh, model = train.restore_trained(config, workdir, "sample")
    out[kind] = (state, mesh, model, summary)
  return config, out


@pytest.mark.parametrize("kind", ["full", "inference", "torch"])
def test_params_and_every_ema_copy_are_the_release_ema(golden, converted, kind):
  _, out = converted
  state, _, _, summary = out[kind]
  want = engine.flat(imf_params.from_official(traverse_util.unflatten_dict(
      official_net(golden), sep="/")))
  for copy in (state.params, *state.ema_params):
    got = engine.flat(jax.device_get(copy)["params"])
    assert set(got) == set(want)
    for path, w in want.items():
      if kind != "full" and path.startswith(imf_official.V_BLOCK):
        assert not np.any(got[path]), path  # Filled with zeros.
      else:
        np.testing.assert_array_equal(got[path], w, err_msg=path)
  assert int(state.step) == (0 if kind == "torch" else STEP)
  assert ("filled with zeros" in summary) == (kind != "full"), summary


@pytest.mark.parametrize("kind", ["full", "inference", "torch"])
@pytest.mark.parametrize("steps", [1, 2])
def test_converted_workdir_samples_the_official_samples(golden, converted, kind, steps):
  config, out = converted
  state, mesh, model, _ = out[kind]
  k = f"sample{steps}"
  sample_fn = generate.make_sampler(config, model, mesh)  # The sampler --mode=eval uses.
  # The golden batch twice: the batch is split over the suite's 8 simulated devices.
  twice = lambda a: jnp.concatenate([jnp.asarray(a)] * 2)
  got = sample_fn(state.ema_params[-1], twice(golden[f"{k}_noise"]), twice(golden[f"{k}_labels"]),
                  steps, float(golden[f"{k}_omega"]),
                  (float(golden[f"{k}_t_min"]), float(golden[f"{k}_t_max"])))
  n = len(golden[k])
  assert rel_err(got[:n], golden[k]) < RTOL and rel_err(got[n:], golden[k]) < RTOL


def test_zero_v_blocks_are_identities_so_v_is_the_final_layer_on_the_trunk(golden, converted):
  """The inference release's v (the official eval model: v_final_layer on the shared trunk, no v
  blocks) from the filled model equals the v of the same network with the u blocks zeroed too
  (then u and v both read the trunk, so v - u is the difference of the two final layers only)."""
  _, out = converted
  state, _, model, _ = out["inference"]
  params = jax.device_get(state.params)
  flat = engine.flat(params["params"])
  both = {p: (np.zeros_like(a) if p.startswith("u_block_") else a) for p, a in flat.items()}
  both.update({p.replace("v_final", "u_final"): a for p, a in flat.items()
               if p.startswith("v_final")})
  args = [jnp.asarray(golden[f"net_{n}"]) for n in ("z", "h", "omega", "t_min", "t_max", "y")]
  _, v = model.apply(params, *args)
  u_on_trunk, _ = model.apply({"params": engine.nest(both)}, *args)
  assert np.all(np.isfinite(v))
  assert rel_err(v, u_on_trunk) < RTOL


def test_some_v_blocks_missing_is_an_error_listing_them(golden, config_file, tmp_path):
  net = {k: v for k, v in official_net(golden).items() if not k.startswith("v_heads_1/")}
  src = write_orbax_release(tmp_path / "src", net, net)
  with pytest.raises(engine.ConversionError) as e:
    run_cli(src, tmp_path / "w", config_file)
  assert len(e.value.problems) == 13, e.value.problems  # Every parameter of v block 1.
  assert all(p.startswith("missing: v_block_1/") for p in e.value.problems)


def test_cli_refuses_a_meanflow_config_and_a_missing_source(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["convert", "imf_official", f"--src={tmp_path}/absent", f"--workdir={tmp_path}/w",
              "--config=configs/imf_digits.py"])
  assert e.value.code == 2
  assert f"error: {tmp_path}/absent: does not exist" in capsys.readouterr().err
  with pytest.raises(SystemExit) as e:
    cli.main(["convert", "imf_official", f"--src={tmp_path}", f"--workdir={tmp_path}/w",
              "--config=configs/default.py"])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert "error: --config: method='meanflow'" in err and "Traceback" not in err
