"""Pixel MeanFlow (pMF) on scikit-learn's digits, on a laptop CPU: x-prediction in pixel space.

The iMF digits run (configs/imf_digits.py: same data, size, optimizer and steps) with pMF's
changes: the network outputs images (u = (z_t - x_u) / clip(t, 0.05, 1)), the r = t rows keep one
time draw, logit-normal(0.8, 0.8) times, and a bottleneck patch embedding with a learned position
embedding and 2-D RoPE (model.name="dit_pixel"). No perceptual term: LPIPS and ConvNeXt take RGB
images of natural scenes (ImageNet-trained weights, 224 x 224 crops); on 8 x 8 grey digits they
would measure nothing the pixel loss does not, and their weights are not on a laptop by default.

  python main.py --config=configs/pmf_digits.py --workdir=/tmp/pmf_digits
  python -m scripts.digits_sample_quality --config=configs/pmf_digits.py --workdir=/tmp/pmf_digits
"""
from configs import default


def get_config():
  config = default.get_config()
  config.method = "pmf"
  config.model.update(name="dit_pixel", variant="B/2", depth=4, hidden_size=128, num_heads=4,
                      head_depth=1)
  config.pmf.update(lpips_weight=0.0, convnext_weight=0.0)
  config.sample.update(cfg_scale=1.5)
  config.eval.update(cfg_scale=1.5)
  return config
