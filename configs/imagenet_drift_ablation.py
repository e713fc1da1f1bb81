"""Drifting Models ablation recipe on ImageNet 256 latents: DiT-B/2 generator, MAE-256 features.

Mirrors the official release's latent ablation config (docs/drifting.md; official FID-50K
8.46 paper / 8.49 repo after 30k steps, EMA, best CFG scale 2.0):
  per step N_c = 64 classes x (N_pos = 64 real, N_neg = 64 generated, N_unc = 16 guidance negatives
  from a bank of the 1000 most recent real samples); per-class banks of 128; 1024 real samples
  pushed per step; alpha in [1, 4] with p(alpha) ~ alpha^-3, one per class; tau {0.02, 0.05, 0.2};
  AdamW lr 2e-4 (5k warmup, then constant), betas (0.9, 0.95), weight decay 0.01, grad clip 2.0,
  EMA 0.999, 30k steps; bf16 generator and encoder (fp32 attention / norms / field: the release's
  attn_fp32: true), rematerialised.
Feature encoder: the release's MAE-256 (mae.arch='release', mf_jax/models/mae_resnet.py: widths
256-512-1024-2048, 3-4-6-3 basic blocks; its feature sets as the release's, every 2nd block too).
Pretrain it with the same mae section, then train the generator on its EMA parameters:
  python main.py --config=configs/mae_latent_256.py --workdir=$MAE --config.data.path=$LATENTS
  (released MAE weights: mf_jax/convert/drifting/encoders.py convert_mae)
  python main.py --config=configs/imagenet_drift_ablation.py --workdir=$DIR \
      --config.data.path=$LATENTS --config.drifting.feature_encoder_workdir=$MAE
Generator: the release's DiT (model.name="dit_modern": SwiGLU, RoPE, RMSNorm, QK-norm, 16
in-context class tokens, 32 noise labels of 64 values, alpha embedding), 132.7M parameters as there.
Differences from the release: attention always runs in float32, and the learning-rate warmup
starts at 0 (the release: 1e-6).
"""
from configs import imagenet_base
from mf_jax import drifting

CFG_SCALES = (1.0, 1.5, 2.0, 2.5, 3.0, 3.5)  # Evaluated each time; the best is reported.


def get_config():
  config = imagenet_base.get_config("B/2")
  config.method = "drifting"
  config.model.update(name="dit_modern", cls_tokens=16, noise_classes=64, noise_coords=32,
                      compute_dtype="bfloat16", remat=True)
  config.drifting.update(
      classes_per_step=64, num_pos=64, num_neg=64, num_unc=16, queue_len=128,
      uncond_queue_len=1000, temperatures=(0.02, 0.05, 0.2), alpha_min=1.0, alpha_max=4.0,
      alpha_power=3.0, affinity_floor=drifting.RELEASED_AFFINITY_FLOOR)
  config.mae.update(arch="release", widths=(256, 512, 1024, 2048), layers=(3, 4, 6, 3),
                    patch_size=2, mask_ratio=0.5, every_k_block=2, compute_dtype="bfloat16",
                    remat=True)
  config.optim.update(learning_rate=2e-4, b1=0.9, b2=0.95, weight_decay=0.01, warmup_steps=5000,
                      schedule="constant", grad_clip=2.0)
  config.ema_decays = (0.999,)
  # train.global_batch_size is the number of real samples pushed into the banks per step.
  config.train.update(global_batch_size=1024, num_steps=30_000, checkpoint_every=2000,
                      sample_every=5000)
  config.eval.update(every_steps=5000, num_steps=(1,), cfg_scale=2.0, cfg_scales=CFG_SCALES)
  config.sample.cfg_scale = 2.0  # The alpha condition of sample grids and --mode=sample.
  return config
