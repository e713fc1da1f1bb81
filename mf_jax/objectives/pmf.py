"""Pixel MeanFlow (pMF) as a plug-in: iMF on pixels with x-prediction and a perceptual term.

The objective and sampler are pure functions in mf_jax/pmf.py (on top of mf_jax/imf.py's terms);
the network is the pixel in-context DiT of mf_jax/models/dit_pixel.py (model.name="dit_pixel"),
which outputs images. The perceptual term's frozen networks, LPIPS-VGG16
(mf_jax/models/lpips.py) and ConvNeXt-V2 (mf_jax/models/convnext.py), are read at step 0 from the
files of pmf.lpips_path and pmf.convnext_path (written by `python -m mf_jax.convert lpips_vgg16`
and `... convnext`) and travel in TrainState.aux; a zero weight drops a term and its network.
Guidance is chosen at sampling time as for iMF: sample.cfg_scale is omega,
sample.guidance_interval the interval.
"""
import os

import jax

from mf_jax import networks, perceptual, pmf
from mf_jax.errors import ConfigError
from mf_jax.models import convnext, lpips
from mf_jax.models.dit_pixel import PixelDiT
from mf_jax.objectives import base, registry
from mf_jax.objectives.imf import FULL_INTERVAL, IMF, build_incontext_dit

LPIPS_HOWTO = ("convert torchvision's VGG16 weights and the `lpips` package's v0.1 linear layers "
               "with `python -m mf_jax.convert lpips_vgg16 --src=vgg16-397923af.pth "
               "--lin=lpips/weights/v0.1/vgg.pth --out=FILE.npz`")
CONVNEXT_HOWTO = ("convert facebook/convnextv2-base-22k-224 (a local Hugging Face folder) with "
                  "`python -m mf_jax.convert convnext --src=HF_DIR --out=FILE.npz`")


def build_pixel_dit(config, v_head: bool = True) -> PixelDiT:
  """The pMF network of config.model and config.data (v_head=False: the inference model)."""
  return build_incontext_dit(config, v_head, PixelDiT, "dit_pixel")


def image_net(model, params):
  """The pMF network as mf_jax/pmf.py sees it: (z, t, h, omega, t_min, t_max, labels) ->
  (x_u, x_v), images; the network itself never sees t (x-prediction uses it, outside)."""
  def net(z, t, h, omega, t_min, t_max, labels):
    del t
    return model.apply(params, z, h, omega, t_min, t_max, labels)
  return net


def convnext_module(config) -> convnext.ConvNeXtV2:
  c = config.pmf
  return convnext.ConvNeXtV2(depths=tuple(c.convnext_depths), dims=tuple(c.convnext_dims))


class PMF(IMF):
  """pMF: iMF's conditions, heads, guidance and sampler interface, on pixels."""
  name = "pmf"
  section = "pmf"
  config_sections = {"pmf": pmf.CONFIG}
  reads_sections = ("pmf",)

  def build_model(self, config):
    return build_pixel_dit(config)

  # --- Frozen perceptual networks (TrainState.aux, loaded at step 0).
  def frozen_networks(self, config):
    c, frozen = config.pmf, []
    use_lpips, use_convnext = pmf.uses_perceptual(c)
    if use_lpips:
      lpips_net = lpips.LPIPS()
      frozen.append(base.FrozenNetwork(
          aux_key="lpips", path=c.lpips_path, file_format="lpips_vgg16", module=lpips_net,
          field="pmf.lpips_path", fix=LPIPS_HOWTO,
          placeholder=lambda key: networks.frozen_placeholder(lpips_net.init, key,
                                                              *lpips.example_inputs()),
          description="LPIPS-VGG16 (pmf.lpips_weight)"))
    if use_convnext:
      convnext_net = convnext_module(config)
      frozen.append(base.FrozenNetwork(
          aux_key="convnext", path=c.convnext_path, file_format="convnext", module=convnext_net,
          field="pmf.convnext_path",
          fix=(f"set pmf.convnext_depths/convnext_dims to the file's size, or {CONVNEXT_HOWTO}"),
          placeholder=lambda key: networks.frozen_placeholder(convnext_net.init, key,
                                                              convnext.example_input()),
          description=(f"ConvNeXt-V2 pooled features (depths {tuple(c.convnext_depths)}, dims "
                       f"{tuple(c.convnext_dims)})")))
    return tuple(frozen)

  def init_aux(self, config, key):
    frozen = self.frozen_networks(config)
    return {f.aux_key: f.placeholder(key) for f in frozen} if frozen else None

  # --- Step and sampling.
  def make_step_grads(self, config, model, mesh):
    del mesh
    c = config.pmf
    lpips_model, convnext_model = lpips.LPIPS(), convnext_module(config)

    def loss(params, x, labels, key, aux):
      aux = aux or {}
      lpips_fn = (perceptual.lpips_closure(lpips_model, aux["lpips"]) if "lpips" in aux
                  else None)
      convnext_fn = (perceptual.convnext_closure(convnext_model, aux["convnext"])
                     if "convnext" in aux else None)
      net = pmf.velocity_net(image_net(model, params), c.t_clip)
      return pmf.pmf_loss(net, x, labels, key, c,
                          pmf.perceptual_fn_of(lpips_fn, convnext_fn, c.crop_size))

    def step_grads(params, aux, x, labels, augment_labels, k_loss, k_aux):
      del augment_labels, k_aux
      # The frozen networks' parameters travel in the state: arguments, not compile-time constants.
      value_and_grad = jax.value_and_grad(lambda p: loss(p, x, labels, k_loss, aux),
                                          has_aux=True)
      return aux, *value_and_grad(params)
    return step_grads

  def make_sample_fn(self, config, model):
    c = config.pmf
    def sample(params, noise, labels, num_steps, cfg_scale, interval=None):
      t_min, t_max = interval or tuple(config.sample.guidance_interval) or FULL_INTERVAL
      net = pmf.velocity_net(image_net(model, params), c.t_clip)
      return pmf.sample(net, noise, labels, num_steps, cfg_scale, t_min, t_max, c.noise_scale)
    return sample

  # --- Checks.
  def validate(self, config):
    super().validate(config)
    c, d = config.pmf, config.data
    if any(pmf.uses_perceptual(c)) and d.channels != 3:
      raise ConfigError(f"pmf.lpips_weight={c.lpips_weight}, pmf.convnext_weight="
                        f"{c.convnext_weight}: the perceptual networks take RGB images, but "
                        f"data.channels={d.channels}. Fix: set --config.pmf.lpips_weight=0 and "
                        "--config.pmf.convnext_weight=0 for this data.")

  def validate_files(self, config):
    """Training reads the perceptual networks' weights (sampling and evaluation do not)."""
    for frozen in self.frozen_networks(config):
      name = "lpips_weight" if frozen.aux_key == "lpips" else "convnext_weight"
      value = getattr(config.pmf, name)
      if not frozen.path:
        raise ConfigError(f"{frozen.field} is empty but pmf.{name}={value}: {frozen.fix}; set "
                          f"--config.{frozen.field}=FILE.npz, or --config.pmf.{name}=0.")
      if not os.path.isfile(frozen.path):
        raise ConfigError(f"{frozen.field}={frozen.path!r} is not a file: {frozen.fix}, or set "
                          f"--config.pmf.{name}=0.")


registry.register(PMF())
