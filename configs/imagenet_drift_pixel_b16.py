"""Drifting Models in pixel space, DiT-B/16 on ImageNet 256 x 256 x 3: the release's pixel SOTA B.

Official FID-50K 1.76 (paper). No VAE anywhere: the generator outputs pixels in [-1, 1], sample
grids, --mode=sample and FID take them as they are. Data: uint8 centre crops written by
  python -m input_pipeline.prepare_imagenet --pixels --src=/data/imagenet/train --out=$PIXELS
  python -m mf_jax.convert.drifting --config=configs/imagenet_drift_pixel_b16.py \
      --convnext_src=$HF/convnextv2-base-22k-224 --convnext_out=$CONVNEXT
  python main.py --config=configs/imagenet_drift_pixel_b16.py --workdir=$DIR \
      --config.data.path=$PIXELS --config.drifting.feature_encoder_workdir=$MAE \
      --config.drifting.convnext_path=$CONVNEXT \
      --config.eval.ref_stats=VIRTUAL_imagenet256_labeled.npz
Mirrors the release's pixel_sota_B: patch 16 on 256 x 256 x 3 (256 tokens), bf16 with remat;
RandomResizedCrop (area [0.2, 1]) and horizontal flips; per step 128 classes x (128 real, 64
generated, 32 guidance negatives from a bank of 1000), per-class banks of 128, alpha in [1, 4]
with p(alpha) ~ alpha^-5; tau {0.02, 0.05, 0.2}; AdamW lr 2e-4 after a 10k-step warmup, weight
decay 0.01, betas (0.9, 0.95), clip 2.0, EMA 0.999, 100k steps; CFG sweep as the latent SOTA.
Generator: the release's DiT (model.name="dit_modern", as in imagenet_drift_ablation.py) with patch
16, attention in float32 (the release's pixel attn_fp32: true); feature encoders, as the release's
use_mae and use_convnext: the release's pixel MAE-640 (8x8 space-to-depth input, 2x2 mask
patches) and the ImageNet-22k ConvNeXt-V2-Base (frozen, float32; input mapped to [0, 1],
ImageNet mean/std, bilinear resize to 224), whose feature sets (mf_jax/models/convnext.py) join the
MAE's in one loss, each normalised on its own and weighted 1. Its weights are a local copy of
Hugging Face's facebook/convnextv2-base-22k-224, converted as above (the release reads the same
checkpoint). Difference from the release: crops come from the stored 256 centre crop (the
release crops the full image).
"""
from configs import imagenet_drift_ablation, imagenet_drift_b2_sota

def get_config(variant="B/16", learning_rate=2e-4):
  config = imagenet_drift_ablation.get_config()
  config.data.update(name="imagenet_pixels", image_size=256, channels=3, vae_path="",
                     random_flip=True, random_crop_min_area=0.2)
  config.model.update(variant=variant)  # dit_modern, bf16, remat: from the ablation config.
  config.drifting.update(classes_per_step=128, num_pos=128, num_neg=64, num_unc=32,
                         queue_len=128, uncond_queue_len=1000, alpha_power=5.0,
                         no_guidance_frac=0.0, use_convnext=True,
                         # The banks as 8-bit pixels: 3.1 GB per chip on 8 chips, not 12.6.
                         bank_dtype="uint8",
                         # Memory plan for 8 chips of 80 GB: one class per chip per pass (16
                         # passes: 76.9 GB per chip on TPU v5p with float32 banks, L/16 52.2 GB
                         # with the uint8 banks below; 2 per pass needed 90.7 with float32). On
                         # 64 chips, set 2 for one pass (2 classes per chip: about half the
                         # FLOPs). See benchmarks/RESULTS.md.
                         accum_classes_per_device=1)
  # The release's pixel MAE-640: 8 x 8 space-to-depth input, 2 x 2 mask patches of that grid.
  config.mae.update(imagenet_drift_b2_sota.MAE_640, input_patch_size=8, patch_size=2,
                    mask_ratio=0.5)
  config.optim.update(learning_rate=learning_rate, warmup_steps=10_000, weight_decay=0.01)
  # One loader batch per step: the release pushes its 2048-image batch (push_per_step 128 < 2048).
  config.train.update(global_batch_size=2048, num_steps=100_000)
  config.eval.update(cfg_scale=1.0, cfg_scales=imagenet_drift_b2_sota.SOTA_CFG_SCALES)
  config.sample.cfg_scale = 1.0
  return config
