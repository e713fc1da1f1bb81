"""The Flax FID Inception against torch-fidelity's PyTorch port, and the weight converter.

torch-fidelity (pip install --no-deps torch-fidelity==0.4.0) is the independent reference. Its
package __init__ imports torchvision, which does not import with this torch; the Inception file
itself needs only torch, so the package is registered as a bare module before importing it.
"""
import importlib.util
import os
import sys
import types

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from eval import inception, inception_convert


def _import_torch_fidelity_inception():
  if "torch_fidelity" not in sys.modules:
    spec = importlib.util.find_spec("torch_fidelity")
    assert spec is not None, ("torch-fidelity is needed as the reference: "
                              "pip install --no-deps torch-fidelity==0.4.0")
    package = types.ModuleType("torch_fidelity")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["torch_fidelity"] = package
  from torch_fidelity import feature_extractor_inceptionv3  # pylint: disable=g-import-not-at-top
  from torch_fidelity import interpolate_compat_tensorflow  # pylint: disable=g-import-not-at-top
  return feature_extractor_inceptionv3, interpolate_compat_tensorflow


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
  """Random Flax params and the same weights saved as a torch state dict under a hub-style name."""
  params = inception.random_inception_params(jax.random.key(0))
  state = {k: torch.from_numpy(v.copy())
           for k, v in inception_convert.flax_to_torch_state_dict(params).items()}
  path = str(tmp_path_factory.mktemp("weights") / "random_inception.pth")
  torch.save(state, path)
  return params, state, path


def test_parity_with_torch_fidelity(random_weights):
  params, _, path = random_weights
  reference_module, _ = _import_torch_fidelity_inception()
  # strict load_state_dict inside: the converted dict has exactly the reference's keys and shapes.
  reference = reference_module.FeatureExtractorInceptionV3(
      "inception-v3-compat", ["2048", "logits_unbiased", "logits"],
      feature_extractor_weights_path=path)
  # 64x48: not square and not 299, so the TF1 resize is exercised (up-sampling both axes).
  images = np.random.default_rng(0).integers(0, 256, (2, 64, 48, 3), dtype=np.uint8)
  with torch.no_grad():
    pool_ref, logits_unbiased_ref, logits_ref = (
        t.numpy() for t in reference(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()))

  # Load through the public path, with its checksum check.
  apply_fn, loaded = inception.load_inception(path, sha256=inception_convert.file_sha256(path))
  out = apply_fn(loaded, images)
  for name, ref in [("pool", pool_ref), ("logits_unbiased", logits_unbiased_ref),
                    ("logits", logits_ref)]:
    got = np.asarray(out[name])
    assert got.shape == ref.shape
    assert np.abs(ref).mean() > 0.1  # the random network is not degenerate
    assert np.max(np.abs(got - ref)) <= 1e-4 * np.max(np.abs(ref)), name
  # The feature-function wrapper pads the odd batch and gives the same features.
  features = inception.InceptionFeatures(apply_fn, params, batch_size=2)
  for batch in (images[:1], jax.numpy.asarray(images[1:])):  # numpy on the host, or a jax array
    start = 0 if isinstance(batch, np.ndarray) else 1
    np.testing.assert_allclose(features(batch), pool_ref[start:start + 1], rtol=0,
                               atol=1e-4 * np.abs(pool_ref).max())


@pytest.mark.parametrize("size", [(17, 40), (512, 300)])
def test_tf1_resize_matches_torch_fidelity(size):
  _, interp = _import_torch_fidelity_inception()
  x = np.random.default_rng(1).uniform(0, 255, (1, size[0], size[1], 3)).astype(np.float32)
  ref = interp.interpolate_bilinear_2d_like_tensorflow1x(
      torch.from_numpy(x).permute(0, 3, 1, 2), size=(299, 299), align_corners=False)
  got = np.asarray(inception.resize_bilinear(x, 299, "tf1"))
  np.testing.assert_allclose(got, ref.permute(0, 2, 3, 1).numpy(), rtol=0, atol=1e-3)


@pytest.mark.parametrize("size", [(17, 40), (512, 300)])
def test_pytorch_fid_resize_matches_f_interpolate(size):
  x = np.random.default_rng(2).uniform(0, 255, (1, size[0], size[1], 3)).astype(np.float32)
  ref = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(299, 299), mode="bilinear",
                      align_corners=False)
  got = np.asarray(inception.resize_bilinear(x, 299, "pytorch_fid"))
  np.testing.assert_allclose(got, ref.permute(0, 2, 3, 1).numpy(), rtol=0, atol=1e-3)


def test_converter_maps_every_parameter(random_weights):
  params, state, _ = random_weights
  n_flax = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))
  assert len(jax.tree_util.tree_leaves(params)) == len(state)
  assert n_flax == sum(t.numel() for t in state.values())
  # BN step counters of a torch checkpoint are the only keys allowed to go unused.
  with_counters = dict(state, **{"Mixed_5b.branch1x1.bn.num_batches_tracked": torch.tensor(0)})
  back = inception_convert.torch_state_dict_to_flax(with_counters)
  jax.tree_util.tree_map(np.testing.assert_array_equal, back, params)


def test_converter_rejects_broken_state_dicts(random_weights):
  _, state, _ = random_weights
  missing = {k: v for k, v in state.items() if k != "Mixed_6b.branch7x7_2.conv.weight"}
  with pytest.raises(ValueError, match=r"missing: Mixed_6b/branch7x7_2/conv/kernel"):
    inception_convert.torch_state_dict_to_flax(missing)
  extra = dict(state, **{"AuxLogits.fc.weight": torch.zeros(3)})
  with pytest.raises(ValueError, match=r"unmapped: AuxLogits\.fc\.weight"):
    inception_convert.torch_state_dict_to_flax(extra)
  reshaped = dict(state, **{"fc.weight": torch.zeros(1000, 2048)})
  with pytest.raises(ValueError, match=r"misshaped: fc\.weight"):
    inception_convert.torch_state_dict_to_flax(reshaped)


def test_missing_or_corrupt_weights_file(random_weights, tmp_path):
  _, _, path = random_weights
  absent = str(tmp_path / "pt_inception-2015-12-05-6726825d.pth")
  with pytest.raises(FileNotFoundError, match=r"copy pytorch-fid's pt_inception-2015-12-05"):
    inception.load_inception(absent)
  with pytest.raises(ValueError, match="Checksum mismatch"):
    inception.load_inception(path, sha256="0123abcd")
  # "auto" checks the hash prefix in a torch-hub style name: random weights under the real
  # file's name are caught before conversion.
  os.symlink(path, absent)
  with pytest.raises(ValueError, match="does not start with 6726825d"):
    inception.load_inception(absent)


def test_npz_weights_load_without_torch(random_weights, tmp_path):
  params, _, path = random_weights
  npz = inception_convert.pth_to_npz(path, str(tmp_path / "inception.npz"))
  _, loaded = inception.load_inception(npz)
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, params)
