"""MeanFlow-L/2 on ImageNet 256 latents; guidance as in imagenet_base.get_meanflow_config."""
from configs import imagenet_base


def get_config():
  return imagenet_base.get_meanflow_config("L/2")
