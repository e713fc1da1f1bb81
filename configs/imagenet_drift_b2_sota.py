"""Drifting Models, DiT-B/2 on ImageNet 256 latents: the official release's SOTA B recipe.

Official FID-50K 1.75 (paper) / 1.74 (repo) at CFG 1.1 with the MAE-640 feature encoder (a ResNet
with widths 640-1280-2560-5120; see imagenet_drift_ablation.py for how the encoder is pretrained
and wired in, and for what differs from the release). Per step 128 classes x (64 real, 64
generated, 32 guidance negatives), alpha in [1, 4] with p(alpha) ~ alpha^-5, 4096 real samples
pushed per step (the release: 2 loader batches of 2048), AdamW lr 4e-4 after a 10k-step warmup, no
weight decay, clip 2.0, EMA 0.999, 200k steps. Generator: the release's DiT (model.name=
"dit_modern", from imagenet_drift_ablation.py), 132.7M parameters (L/2: 462.9M), as there, with
attention in bf16 as the release's latent SOTA configs (attn_fp32: false; the ablation and pixel
configs keep it in float32).
Released weights: python -m mf_jax.convert.drifting --src=ARTIFACT --workdir=W --config=<this file>.
"""
from configs import imagenet_drift_ablation

SOTA_CFG_SCALES = (1.0, 1.1, 1.2, 1.4, 1.6, 1.8, 2.0, 2.5, 3.0, 3.5)
MAE_640 = dict(arch="release", widths=(640, 1280, 2560, 5120), layers=(3, 4, 6, 3))


def get_config(variant="B/2", alpha_power=5.0, weight_decay=0.0, push_per_step=4096):
  config = imagenet_drift_ablation.get_config()
  config.model.update(variant=variant, attn_fp32=False)  # The release's latent SOTA: bf16 attention.
  # Memory plan: 128 classes over 8 chips are 16 per chip, too many for one pass (126 GB of
  # temporaries per chip): 4 passes of 4 classes (49.6 GB per chip for B/2, measured before the
  # MAE's kernels were stored in bf16, and 68.6 for L/2 on TPU v5p, see benchmarks/RESULTS.md). From 32 chips on a chip holds <= 4 classes and takes one
  # pass.
  config.drifting.update(classes_per_step=128, num_pos=64, num_neg=64, num_unc=32,
                         alpha_power=alpha_power, accum_classes_per_device=4)
  config.mae.update(MAE_640)
  config.optim.update(learning_rate=4e-4, warmup_steps=10_000, weight_decay=weight_decay)
  config.train.update(global_batch_size=push_per_step, num_steps=200_000)
  config.eval.update(cfg_scale=1.0, cfg_scales=SOTA_CFG_SCALES)
  config.sample.cfg_scale = 1.0
  return config
