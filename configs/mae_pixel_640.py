"""The Drifting release's MAE-640 feature encoder on ImageNet 256x256 pixels.

  python main.py --config=configs/mae_pixel_640.py --workdir=$MAE --config.data.path=$PIXELS

As configs/mae_latent_640.py (release configs/mae/pixel_640.yaml) on 256x256x3 images: each 8x8
pixel patch is folded into 192 channels first (mae.input_patch_size = 8), so the encoder sees a
32x32 grid as in latent space and a hidden 2x2 cell is a 16x16 pixel square. Pixel records come
from `python -m input_pipeline.prepare_imagenet --pixels` (data.name='imagenet_pixels').
"""
from configs import imagenet_base
from configs.mae_latent_256 import release_mae


def get_config():
  config = imagenet_base.get_config()
  config.data.update(name="imagenet_pixels", image_size=256, channels=3)
  config = release_mae(config, width=640, num_steps=200_000)
  config.mae.input_patch_size = 8
  return config
