"""ImageNet 256 on SD-VAE latents (32x32x4), the paper's recipe (docs/meanflow.md).

240 epochs at batch 256, Adam lr 1e-4 constant, betas (0.9, 0.95), no weight decay or warmup,
EMA 0.9999, logit-normal(-0.4, 1) times, 25% r != t, adaptive weighting p = 1.
Guidance in the target: omega = 1, kappa = 0.5 (effective scale 2), the official B/4 release's
setting, on t in [0, guidance_t_max] (get_meanflow_config). The size configs (imagenet_b2.py, ...)
pick the variant and the guidance interval.
"""
from configs import base


def get_config(variant="B/2"):
  config = base.get_config()
  config.data.update(name="imagenet_latents", path="", image_size=32, channels=4, num_classes=1000,
                     latent_scale=0.18215)
  config.model.variant = variant
  config.train.update(global_batch_size=256, num_steps=240 * 1_281_167 // 256)
  return config


def get_meanflow_config(variant, guidance_t_max=1.0):
  """The MeanFlow size configs: get_config(variant) with guidance in the target.

  Where the paper is silent they follow the official code (docs/differences.md): null labels on
  the first r = t rows, no latent flips, uniformly random evaluation labels, uint8 as
  floor(127.5 x + 128).
  """
  config = get_config(variant)
  config.meanflow.update(guidance_omega=1.0, guidance_kappa=0.5, guidance_t_min=0.0,
                         guidance_t_max=guidance_t_max, class_dropout_rows="r_eq_t_first")
  config.data.random_flip = False
  config.eval.update(label_sampling="uniform", uint8_rounding="half_up")
  return config
