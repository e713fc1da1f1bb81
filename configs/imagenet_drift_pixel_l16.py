"""Drifting Models in pixel space, DiT-L/16 on ImageNet 256 x 256 x 3: the release's pixel SOTA L.

Official FID-50K 1.61 (paper). As imagenet_drift_pixel_b16.py (same data, no VAE, same recipe,
MAE-640 and ConvNeXt-V2-Base features, and the same difference from the release) except L/16
(24 blocks, width 1024, 16 heads) and AdamW lr 4e-4, as in the release's pixel_sota_L. Memory: 52.2
GB per chip on 8 TPU v5p chips with one class per pass and uint8 banks, so it fits 8 chips of 80 GB
(see benchmarks/RESULTS.md).
  python main.py --config=configs/imagenet_drift_pixel_l16.py --workdir=$DIR \
      --config.data.path=$PIXELS --config.drifting.feature_encoder_workdir=$MAE \
      --config.drifting.convnext_path=$CONVNEXT \
      --config.eval.ref_stats=VIRTUAL_imagenet256_labeled.npz
"""
from configs import imagenet_drift_pixel_b16


def get_config():
  return imagenet_drift_pixel_b16.get_config("L/16", learning_rate=4e-4)
