"""Parity with the official pixel MeanFlow JAX code (Lyy-iiis/pMF) on golden outputs it produced.

tests/golden/pmf_official.npz (scripts/make_pmf_golden.py, which records the official commit) holds
a tiny official pmfDiT with random weights, its (u, v) velocities, the official loss with the
perceptual term (the official paired crop on the key its forward drew, then tiny random LPIPS and
ConvNeXt-V2 stand-ins) and its gradient on a fixed batch with fixed draws, and a 1-step sample.
Our network gets the official weights through the converter's table
(mf_jax/convert/formats/pmf_official.py); our objective (the whole-batch form; tests/test_pmf.py
shows the per-part form equal to it in float64) gets the official draws in the official row layout
(r = t first, dropped rows first), and our crop boxes come from the official key through
perceptual.crop_boxes, so the crops agree only if the box draws do.

Tolerances as tests/test_imf_golden.py (float32 on both sides, same operations in another order:
1e-5 relative on outputs and loss, 1e-4 on the gradient through the jvp); the perceptual
distances add a cubic resampling and two small networks, a few more float32 roundings per
element (1e-5 holds). A wrong crop box, mask or weight changes them by 1e-2 or more.
"""

import jax
import jax.numpy as jnp
import pytest

from mf_jax import imf, perceptual, pmf
from mf_jax.convert.formats import pmf_official
from mf_jax.models import convnext, dit_pixel, lpips
import golden_files
from numerics import rel_err

RTOL, RTOL_GRAD = 1e-5, 1e-4
DRAWS = ("r", "t", "e", "omega", "t_min", "t_max", "dropped")


@pytest.fixture(scope="module")
def golden():
  return golden_files.load("pmf_official.npz")


_tree = golden_files.subtree


@pytest.fixture(scope="module")
def ours(golden):
  """(params converted from the official ones, image_net(params), perceptual_fn)."""
  g = lambda k: int(golden[f"tiny_{k}"])
  model = dit_pixel.PixelDiT(
      variant=f"B/{g('patch_size')}", image_size=g("input_size"), channels=g("in_channels"),
      num_classes=int(golden["num_classes"]), depth=g("depth"), hidden_size=g("hidden_size"),
      num_heads=g("num_heads"), head_depth=g("aux_head_depth"))
  params = jax.tree_util.tree_map(jnp.asarray, pmf_official.from_official(_tree(golden, "param")))

  def image_net(p):
    return lambda z, t, h, omega, t_min, t_max, y: model.apply({"params": p}, z, h, omega, t_min,
                                                               t_max, y)
  # The stand-in frozen networks, sized by their stored weights.
  lpips_vars, convnext_vars = _tree(golden, "lpips"), _tree(golden, "convnext")
  lp = lpips_vars["params"]
  n_blocks = len({k.split("_")[0] for k in lp["vgg"]})
  lpips_net = lpips.LPIPS(
      depths=tuple(sum(k.startswith(f"conv{b}_") for k in lp["vgg"]) for b in range(1, 6)),
      widths=tuple(lp["vgg"][f"conv{b}_1"]["kernel"].shape[-1] for b in range(1, n_blocks + 1)))
  cp = convnext_vars["params"]
  convnext_net = convnext.ConvNeXtV2(
      depths=tuple(sum(k.startswith(f"stage{i}_") for k in cp) for i in range(4)),
      dims=tuple(cp[f"stage{i}_block0"]["dwconv"]["kernel"].shape[-1] for i in range(4)))
  perceptual_fn = pmf.perceptual_fn_of(perceptual.lpips_closure(lpips_net, lpips_vars),
                                       perceptual.convnext_closure(convnext_net, convnext_vars),
                                       int(golden["crop"]))
  return params, image_net, perceptual_fn


def _config(golden):
  m = lambda k: float(golden[f"method_{k}"])
  config = pmf.default_config()
  config.update(num_classes=int(golden["num_classes"]), adaptive_p=m("norm_p"),
                adaptive_c=m("norm_eps"), noise_scale=m("noise_scale"),
                lpips_weight=m("lpips_lambda"), convnext_weight=m("convnext_lambda"),
                perceptual_max_t=m("perceptual_max_t"), crop_size=int(golden["crop"]))
  return config


def _boxes(golden, perm=None):
  """The crop boxes our crop_boxes draws from the official forward's key, [B, 4]."""
  key = jax.random.wrap_key_data(jnp.asarray(golden["loss_crop_key"]))
  x = golden["loss_x"]
  boxes = jnp.stack(perceptual.crop_boxes(key, *x.shape[:3]), axis=1)
  return boxes if perm is None else boxes[perm]


def test_network_velocities(golden, ours):
  """The official network's (u, v) include its x-to-u step: ours is pmf.velocity_net."""
  params, image_net, _ = ours
  names = ("z", "t", "h", "omega", "t_min", "t_max", "y")
  net = pmf.velocity_net(image_net(params), pmf.default_config().t_clip)
  u, v = jax.jit(net)(*(golden[f"net_{k}"] for k in names))
  assert golden["net_t"].min() < 0.05  # The clip of t is exercised.
  assert rel_err(u, golden["net_u"]) < RTOL
  assert rel_err(v, golden["net_v"]) < RTOL


def _check_loss_and_grad(golden, metrics, grads):
  for ours_name, name in (("loss", "loss"), ("loss_u", "loss_loss_u"), ("loss_v", "loss_loss_v"),
                          ("loss_lpips", "loss_aux_loss_lpips"),
                          ("loss_convnext", "loss_aux_loss_convnext")):
    assert rel_err(metrics[ours_name], golden[name]) < RTOL, ours_name
  golden_files.assert_gradients_close(grads, pmf_official.from_official(_tree(golden, "grad")),
                                      RTOL_GRAD)


def test_loss_with_perceptual_terms_and_gradient(golden, ours):
  params, image_net, perceptual_fn = ours
  draws = imf.Draws(**{k: jnp.asarray(golden[f"loss_{k}"]) for k in DRAWS})
  config = _config(golden)
  t = golden["loss_t"]
  assert golden["loss_dropped"].any() and (t != golden["loss_r"]).any()
  assert (t < config.perceptual_max_t).any() and (t >= config.perceptual_max_t).any()

  @jax.jit
  def loss_and_grad(p):
    return jax.value_and_grad(lambda p_: pmf.pmf_loss_from_draws(
        pmf.velocity_net(image_net(p_), config.t_clip), golden["loss_x"], golden["loss_labels"],
        draws, _boxes(golden), config, perceptual_fn), has_aux=True)(p)
  (_, metrics), grads = loss_and_grad(params)
  _check_loss_and_grad(golden, metrics, grads)


def test_one_step_sample(golden, ours):
  params, image_net, _ = ours
  config = _config(golden)
  sample = jax.jit(lambda p, noise, y: pmf.sample(
      pmf.velocity_net(image_net(p), config.t_clip), noise, y, 1, float(golden["sample_omega"]),
      float(golden["sample_t_min"]), float(golden["sample_t_max"]), config.noise_scale))
  got = sample(params, golden["sample_noise"], golden["sample_labels"])
  assert rel_err(got, golden["sample"]) < RTOL
