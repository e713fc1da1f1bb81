"""U-Net parity with the official py-meanflow SongUNet (golden file from scripts/make_unet_golden.py)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cifar10_unet
from mf_jax import train_state as ts
from mf_jax.convert import cifar_unet_torch
from mf_jax.models.unet import SongUNet

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "unet_tiny.npz")


def _golden():
  data = np.load(GOLDEN)
  state = {k[len("param:"):]: data[k] for k in data.files if k.startswith("param:")}
  return data, state


def _tiny_model():  # The same values as make_unet_golden.TINY.
  return SongUNet(image_size=8, channels=3, model_channels=8, channel_mult=(1, 2), num_blocks=1,
                  attn_resolutions=(4,), dropout=0.2, augment_dim=6)


def test_converted_official_unet_reproduces_official_outputs():
  data, state = _golden()
  model = _tiny_model()
  x = jnp.asarray(data["x"], jnp.float32)
  t = jnp.asarray(data["t"], jnp.float32)
  expected = jax.eval_shape(lambda k: model.init(k, x, (t, t), None, data["aug"].astype(np.float32)),
                            jax.random.key(0))
  params = cifar_unet_torch.to_flax(state, expected)
  n_params = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(params))
  assert n_params == int(data["tiny_param_count"])
  apply = jax.jit(model.apply, static_argnames="train")
  with jax.enable_x64(True):  # float64 on both sides: only the reference's float32 softmax rounds (~1e-7).
    params64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
    x64, t64, h64, aug64 = [jnp.asarray(data[k], jnp.float64) for k in ("x", "t", "h", "aug")]
    # One call: the augmentation labels and all-zero labels (the reference passes None when
    # sampling and skips the mapping; zeros must give the same).
    both = apply(params64, jnp.concatenate([x64, x64]), (jnp.tile(t64, 2), jnp.tile(h64, 2)), None,
                 jnp.concatenate([aug64, jnp.zeros_like(aug64)]))
    for got, want in zip(jnp.split(both, 2), (data["out"], data["out_no_aug"])):
      rel = np.linalg.norm(np.asarray(got) - want) / np.linalg.norm(want)
      assert rel < 1e-5, rel


def test_dropout_only_in_training_and_driven_by_the_given_key():
  model = SongUNet(image_size=4, channels=1, model_channels=8, channel_mult=(1,), num_blocks=1,
                   attn_resolutions=(), dropout=0.5)
  x, t = jax.random.normal(jax.random.key(0), (2, 4, 4, 1)), jnp.asarray([0.9, 0.4])
  shapes = jax.eval_shape(lambda k: model.init(k, x, (t, t)), jax.random.key(1))
  rng = np.random.default_rng(0)  # Random weights everywhere (the init zeroes the output layers).
  params = jax.tree_util.tree_map(lambda a: jnp.asarray(0.3 * rng.normal(size=a.shape), a.dtype),
                                  shapes)
  apply = jax.jit(model.apply, static_argnames="train")
  run = lambda key: np.asarray(apply(params, x, (t, t), train=True, rngs={"dropout": key}))
  np.testing.assert_array_equal(run(jax.random.key(2)), run(jax.random.key(2)))
  assert np.abs(run(jax.random.key(2)) - run(jax.random.key(3))).max() > 1e-3
  assert np.abs(run(jax.random.key(2)) - np.asarray(apply(params, x, (t, t)))).max() > 1e-3


def test_full_size_parameter_count_equals_official():
  data, _ = _golden()
  config = cifar10_unet.get_config()
  model = ts.build_model(config)
  shapes = jax.eval_shape(lambda k: model.init(k, *ts.example_inputs(config)), jax.random.key(0))
  count = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(shapes))
  assert count == int(data["full_param_count"])  # 55,932,419 from the official SongUNet.


def test_converter_names_missing_and_unused_tensors():
  data, state = _golden()
  model = _tiny_model()
  x, t = jnp.zeros((1, 8, 8, 3)), jnp.zeros((1,))
  expected = jax.eval_shape(lambda k: model.init(k, x, (t, t), None, jnp.zeros((1, 6))),
                            jax.random.key(0))
  broken = dict(state)
  del broken["map_layer0.weight"]
  broken["extra.weight"] = np.zeros((2, 2))
  with pytest.raises(ValueError, match=r"(?s)unmapped: extra\.weight.*missing: map_layer0/kernel"):
    cifar_unet_torch.to_flax(broken, expected)


def _tiny_unet_config():
  config = cifar10_unet.get_config()
  config.data.update(image_size=8)
  config.model.unet.update(channels=8, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,))
  config.ema_decays = (0.99995, 0.9999)
  return config


def test_release_style_checkpoint_converts_into_a_workdir(tmp_path):
  import orbax.checkpoint as ocp
  import torch
  data, state = _golden()
  path = str(tmp_path / "model.pth")
  model_sd = {f"{net}.{k}": torch.tensor(v) for net in ("net", "net_ema1") for k, v in state.items()}
  model_sd["net_ema1.map_layer0.bias"] = model_sd["net_ema1.map_layer0.bias"] + 1  # Tell them apart.
  model_sd["num_updates"] = torch.tensor(7)
  torch.save({"model": model_sd, "epoch": 3}, path)
  cifar_unet_torch.convert(path, str(tmp_path / "wd"), _tiny_unet_config())
  manager = ocp.CheckpointManager(str(tmp_path / "wd" / "checkpoints"))
  restored = manager.restore(0, args=ocp.args.StandardRestore())
  assert len(restored["ema_params"]) == 2
  for tree in (restored["params"], *restored["ema_params"]):
    got = np.asarray(tree["params"]["map_layer0"]["bias"])
    np.testing.assert_allclose(got, state["map_layer0.bias"] + 1, rtol=1e-6)  # net_ema1, not net.
    np.testing.assert_allclose(np.asarray(tree["params"]["enc_8x8_conv"]["kernel"]),
                               state["enc.8x8_conv.weight"].transpose(2, 3, 1, 0), rtol=1e-6)
  with pytest.raises(ValueError, match="net_ema2"):
    cifar_unet_torch.read_checkpoint(path, "net_ema2")


def test_reading_a_checkpoint_without_torch_says_how_to_fix_it(monkeypatch, tmp_path):
  """A missing file is named before torch is asked for; an existing one asks for torch."""
  import sys
  monkeypatch.setitem(sys.modules, "torch", None)
  absent = str(tmp_path / "model.pth")
  with pytest.raises(ValueError, match=f"{absent}: does not exist"):
    cifar_unet_torch.read_checkpoint(absent)
  with open(absent, "wb") as f:
    f.write(b"not empty")
  with pytest.raises(ValueError, match=f"{absent}: is a PyTorch file.*pip install torch"):
    cifar_unet_torch.read_checkpoint(absent)
