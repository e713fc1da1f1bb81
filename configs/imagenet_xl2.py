"""MeanFlow-XL/2 on ImageNet 256 latents; guidance interval [0, 0.75] as in the paper's XL/2 run."""
from configs import imagenet_base


def get_config():
  return imagenet_base.get_meanflow_config("XL/2", guidance_t_max=0.75)
