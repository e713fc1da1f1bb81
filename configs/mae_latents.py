"""Pretrains the drifting feature encoder as a masked autoencoder on ImageNet latents.

  python main.py --config=configs/mae_latents.py --workdir=$MAE --config.data.path=/data/latents/train
  python main.py --config=configs/imagenet_drift_b2.py --workdir=$DIR \
      --config.drifting.feature_encoder_workdir=$MAE --config.data.path=/data/latents/train

ResNet-style encoder (widths 128-256-512-512, 2 blocks per stage), 2x2 latent patches, 75% hidden.
The paper does not give its exact MAE recipe (docs/drifting.md); these settings are this codebase's choice.
"""
from configs import imagenet_base


def get_config():
  config = imagenet_base.get_config()
  config.method = "mae"
  config.optim.update(learning_rate=1.5e-4, b1=0.9, b2=0.95, weight_decay=0.05, warmup_steps=5000,
                      schedule="cosine")
  config.ema_decays = (0.999,)
  config.train.update(global_batch_size=1024, num_steps=200_000, sample_every=0)
  config.eval.every_steps = 0
  return config
