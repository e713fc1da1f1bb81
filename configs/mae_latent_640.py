"""The Drifting release's MAE-640 feature encoder on ImageNet 256 latents (the SOTA encoder).

  python main.py --config=configs/mae_latent_640.py --workdir=$MAE --config.data.path=$LATENTS

As configs/mae_latent_256.py (release configs/mae/latent_640.yaml) with widths 640-1280-2560-5120
and 200k steps. The release fine-tunes the last 3k steps with a classification loss (weight 0.1);
that stage is not reproduced here.
"""
from configs import imagenet_base
from configs.mae_latent_256 import release_mae


def get_config():
  return release_mae(imagenet_base.get_config(), width=640, num_steps=200_000)
