"""Drifting Models, DiT-L/2 on ImageNet 256 latents: the official release's SOTA L recipe.

Official FID-50K 1.54 (paper) / 1.53 (repo) at CFG 1.0 with the MAE-640 encoder. As the SOTA B
config (imagenet_drift_b2_sota.py) except: L/2 (24 blocks, width 1024, 16 heads), p(alpha) ~
alpha^-3, weight decay 0.01, 2048 real samples pushed per step, and alpha = 1 for half of the
labels (the release's no_cfg_frac 0.5: drifting.no_guidance_frac).
"""
from configs import imagenet_drift_b2_sota


def get_config():
  config = imagenet_drift_b2_sota.get_config("L/2", alpha_power=3.0, weight_decay=0.01,
                                             push_per_step=2048)
  config.drifting.no_guidance_frac = 0.5
  return config
