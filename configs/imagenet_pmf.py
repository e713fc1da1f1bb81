"""Pixel MeanFlow (pMF) on ImageNet pixels: get_config("B/16" | "L/16" | "B/32" | "L/32").

Lu et al., "One-step Latent-free Image Generation with Pixel Mean Flows" (arXiv 2601.22158): 1-NFE
FID 3.12 (B/16) and 2.52 (L/16) at 256 x 256, 3.70 (B/32) and 2.75 (L/32) at 512 x 512, with no
VAE. The recipe of the official training configs: batch 1024, 320 epochs, Muon (2-D weights) with
Adam (the rest, betas (0.9, 0.95)), lr 1e-3 constant; three EMAs by half-life (500, 1000, 2000
kimg, EDM ramp-up); float32; logit-normal(0.8, 0.8) times (L/32: mean 0.0) with half the batch
r = t; omega ~ omega^-beta on [1, 8) (beta 2 for L/16); noise N(0, s^2), s = 1 (/16), 2 (B/32),
4 (L/32); the perceptual term 0.4 LPIPS + 0.1 ConvNeXt on t < 0.8 (L/32: 0.6); no flips.
Sampling settings are the released ones (the official eval config):

  size  image  omega  interval     EMA (kimg)
  B/16  256    8.5    [0.1, 0.7]   2000
  L/16  256    7.0    [0.2, 0.7]   1000
  B/32  512    6.5    [0.1, 0.7]   2000
  L/32  512    7.5    [0.2, 0.6]   2000

Data: uint8 centre crops at the model's resolution, and the perceptual networks' weights:
  python -m input_pipeline.prepare_imagenet --pixels --image_size=256 --src=$IMAGENET/train --out=$PIXELS
  python -m mf_jax.convert lpips_vgg16 --src=vgg16-397923af.pth --lin=$LPIPS/weights/v0.1/vgg.pth \
      --out=$LPIPS_NPZ
  python -m mf_jax.convert convnext --src=$HF/convnextv2-base-22k-224 --out=$CONVNEXT_NPZ
  python main.py --config=configs/imagenet_pmf.py:B/16 --workdir=$DIR --config.data.path=$PIXELS \
      --config.pmf.lpips_path=$LPIPS_NPZ --config.pmf.convnext_path=$CONVNEXT_NPZ
"""
from configs import imagenet_base

EPOCH = 1_281_167
HALF_LIVES_KIMG = (500.0, 1000.0, 2000.0)
# size -> (image size, noise scale, time mean, omega beta, perceptual max t,
#          released (omega, interval, EMA half-life in kimg)).
VARIANTS = {
    "B/16": (256, 1.0, 0.8, 1.0, 0.8, (8.5, (0.1, 0.7), 2000.0)),
    "L/16": (256, 1.0, 0.8, 2.0, 0.8, (7.0, (0.2, 0.7), 1000.0)),
    "B/32": (512, 2.0, 0.8, 1.0, 0.8, (6.5, (0.1, 0.7), 2000.0)),
    "L/32": (512, 4.0, 0.0, 1.0, 0.6, (7.5, (0.2, 0.6), 2000.0)),
}


def get_config(variant="B/16"):
  if variant not in VARIANTS:
    raise ValueError(f"configs/imagenet_pmf.py:{variant}: choose one of {list(VARIANTS)}.")
  size, noise_scale, time_mu, omega_beta, max_t, (omega, interval, ema) = VARIANTS[variant]
  config = imagenet_base.get_config(variant)
  config.method = "pmf"
  config.data.update(name="imagenet_pixels", image_size=size, channels=3, vae_path="",
                     random_flip=False, random_crop_min_area=0.0)
  config.model.update(name="dit_pixel", variant=variant, head_depth=8)
  config.pmf.update(noise_scale=noise_scale, time_mu=time_mu, omega_beta=omega_beta,
                    perceptual_max_t=max_t)
  config.optim.update(name="muon", learning_rate=1e-3, b1=0.9, b2=0.95, weight_decay=0.0,
                      warmup_steps=0)
  config.ema_decays = ()
  config.ema_half_lives_kimg = HALF_LIVES_KIMG
  config.train.update(global_batch_size=1024, num_steps=320 * EPOCH // 1024)
  ema_name = f"{ema:g}kimg"  # mf_jax/ema.py's name of that copy.
  config.sample.update(cfg_scale=omega, guidance_interval=interval, ema_name=ema_name)
  config.eval.update(cfg_scale=omega, num_steps=(1,), label_sampling="uniform",
                     uint8_rounding="half_up", ema_name=ema_name)
  return config
