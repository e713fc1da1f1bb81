"""MeanFlow-B/2 on ImageNet 256 latents.

Guidance in the target: omega = 1, kappa = 0.5 (effective scale 2), the official B/4 release's
setting; guidance interval [0.0, 1.0].
"""
from configs import imagenet_base


def get_config():
  config = imagenet_base.get_config("B/2")
  config.meanflow.update(guidance_omega=1.0, guidance_kappa=0.5, guidance_t_min=0.0,
                         guidance_t_max=1.0)
  return config
