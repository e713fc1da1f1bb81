"""The Drifting release's MAE-256 feature encoder on ImageNet 256 latents (the ablation encoder).

  python main.py --config=configs/mae_latent_256.py --workdir=$MAE --config.data.path=$LATENTS

Mirrors the release's MAE pretraining config for the ablation (github.com/lambertae/drifting at
accd0cf0, configs/mae/latent_ablation_256.yaml): the MAE ResNet with widths 256-512-1024-2048 and
3-4-6-3 basic blocks (mf_jax/models/mae_resnet.py), 2x2 latent cells hidden with probability 0.5,
batch 8192, AdamW lr 4e-3 (4k warmup steps, then constant), betas (0.9, 0.95), weight decay 0.01,
grad clip 2.0, EMA 0.9995, bf16, 30k steps. A drifting run uses its EMA parameters through
drifting.feature_encoder_workdir with the same mae section (configs/imagenet_drift_ablation.py).
Not reproduced: the release's final classification fine-tuning (finetune_last_steps; 0 here anyway)
and its augmentation of latents (data.random_flip flips them).
"""
from configs import imagenet_base


def release_mae(config, width: int, num_steps: int):
  """The release's MAE recipe on `config` with first width `width` (256 or 640)."""
  config.method = "mae"
  config.mae.update(arch="release", widths=tuple(width * 2 ** s for s in range(4)),
                    layers=(3, 4, 6, 3), patch_size=2, mask_ratio=0.5, input_patch_size=1,
                    every_k_block=2, compute_dtype="bfloat16")
  config.optim.update(name="adamw", learning_rate=4e-3, b1=0.9, b2=0.95, weight_decay=0.01,
                      warmup_steps=4000, schedule="constant", grad_clip=2.0)
  config.ema_decays = (0.9995,)
  config.train.update(global_batch_size=8192, num_steps=num_steps, checkpoint_every=5000,
                      sample_every=0)
  config.eval.every_steps = 0
  return config


def get_config():
  return release_mae(imagenet_base.get_config(), width=256, num_steps=30_000)
