"""Improved MeanFlow (iMF) on ImageNet 256 latents: get_config("B/2" | "M/2" | "L/2" | "XL/2").

Geng, Lu, Wu, Shechtman, Kolter, He, "Improved Mean Flows" (arXiv 2512.02012), 1-NFE FID 3.39 /
2.27 / 1.86 / 1.72 for B/M/L/XL. The recipe of the official code's B/2 training config: batch 1024,
AdamW lr 1e-4, betas (0.9, 0.95), no weight decay, 10 warmup epochs, constant EMA 0.9999, 640
epochs, float32; logit-normal(-0.4, 1) times with half the batch r = t; omega ~ 1/omega on [1, 8);
10% class dropout on the official rows. Sampling settings are the released ones (the official
eval config; `--config.sample.cfg_scale` is omega):

  size  1-NFE omega, interval      2-NFE
  B/2   8.0 on [0.40, 0.65]
  M/2   10.5 on [0.40, 0.60]
  L/2   10.5 on [0.40, 0.60]
  XL/2  8.0 on [0.42, 0.62]        4.0 on [0.36, 0.64]

  python main.py --config=configs/imagenet_imf.py:B/2 --workdir=$DIR --config.data.path=/data/latents/train

Latents as the official code: a fresh posterior sample per step, no flips, normalised per channel
x = (z - mean) / std with the official code's constant statistics (LATENT_MEAN, LATENT_STD) instead
of MeanFlow's x 0.18215; decoding inverts it. The statistics of one's own prepared set are printed
by `python -m input_pipeline.prepare_imagenet` and stored in its manifest
(`input_pipeline.latents.latent_statistics`); pass them as --config.data.latent_mean/latent_std.
"""
from configs import imagenet_base

EPOCH = 1_281_167
# size -> (1-NFE omega, interval); the released evaluation settings.
SAMPLING = {"B/2": (8.0, (0.40, 0.65)), "M/2": (10.5, (0.40, 0.60)),
            "L/2": (10.5, (0.40, 0.60)), "XL/2": (8.0, (0.42, 0.62))}
# Per-channel mean and std of the SD-VAE ft-MSE latents, constants of the official code
# (Lyy-iiis/imeanflow utils/vae_util.py, LatentManager; it ships no computation of them).
LATENT_MEAN = (0.86488, -0.27787343, 0.21616915, 0.3738409)
LATENT_STD = (4.85503674, 5.31922414, 3.93725398, 3.9870003)


def get_config(variant="B/2"):
  if variant not in SAMPLING:
    raise ValueError(f"configs/imagenet_imf.py:{variant}: choose one of {list(SAMPLING)}.")
  config = imagenet_base.get_config(variant)
  config.method = "imf"
  config.model.update(name="dit_incontext", variant=variant, head_depth=8)
  config.data.update(random_flip=False, latent_mean=LATENT_MEAN, latent_std=LATENT_STD)
  config.optim.update(name="adamw", learning_rate=1e-4, b1=0.9, b2=0.95, weight_decay=0.0,
                      warmup_epochs=10.0)
  config.data.num_train_examples = EPOCH
  config.ema_decays = (0.9999,)
  config.train.update(global_batch_size=1024, num_steps=640 * EPOCH // 1024)
  omega, interval = SAMPLING[variant]
  config.sample.update(cfg_scale=omega, guidance_interval=interval)
  config.eval.update(cfg_scale=omega, num_steps=(1,), label_sampling="uniform",
                     uint8_rounding="half_up")
  return config
