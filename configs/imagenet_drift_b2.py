"""Drifting Models, DiT-B/2 generator on ImageNet 256 latents: the paper's ablation recipe.

AdamW betas (0.9, 0.95), lr 2e-4, grad clip 2.0, EMA 0.999; per step N_c = 64 classes with
N_pos = 64 real and N_neg = 64 generated samples each, N_unc = 16 guidance negatives, alpha in
[1, 4] given to the generator. Features here are the raw latents; the paper's MAE feature encoder
(mf_jax/models/feature_encoder.py) is not yet pretrained and wired in, and the paper reports that
without it ImageNet did not work, so treat this config as the scaffold of that run.
"""
from configs import imagenet_base


def get_config():
  config = imagenet_base.get_config("B/2")
  config.method = "drifting"
  config.model.name = "dit_modern"  # The generator of the paper and release (mf_jax/models/dit_modern.py).
  config.drifting.update(classes_per_step=64, num_pos=64, num_neg=64, num_unc=16, queue_len=128)
  config.optim.update(learning_rate=2e-4, b1=0.9, b2=0.95, grad_clip=2.0)
  config.ema_decays = (0.999,)
  config.sample.cfg_scale = 1.0  # The alpha condition at sampling time.
  return config
