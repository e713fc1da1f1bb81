"""CIFAR-10 MeanFlow, the improved (v1) recipe of the official PyTorch code (py-meanflow).

Unconditional, pixel space, DDPM++ U-Net (55.9M parameters), EDM augmentation (p = 0.12) with its
labels as the network's condition, t ~ logit-normal(-0.6, 1.6), r ~ logit-normal(-4, 1.6),
r = min(t, r) after keeping r on 75% of the batch; adaptive weight p = 0.75; Adam lr 6e-4,
betas (0.9, 0.999), 200 warmup epochs; batch 1024; ~800k steps (16000 epochs); EMA 0.9999, 0.99995
(the release's evaluated network) and 0.9996, updated every 16 steps. FID-50K at 1-NFE against
training-set statistics (write them with `python -m eval.fid --write_stats`, see README).

  python main.py --config=configs/cifar10_unet.py --workdir=WORKDIR \
      --config.data.path=TFDS_DATA_DIR --config.eval.ref_stats=cifar10_train_stats.npz
"""
from configs import base


def get_config():
  config = base.get_config()
  config.data.update(name="cifar10", image_size=32, channels=3, num_classes=0, random_flip=True,
                     num_train_examples=50_000)
  config.model.update(name="unet")
  config.model.unet.update(channels=128, channel_mult=(2, 2, 2), num_blocks=4,
                           attn_resolutions=(16,), dropout=0.2)
  config.augment.update(enabled=True, p=0.12)
  config.meanflow.update(time_sampler="logit_normal", time_mu=-0.6, time_sigma=1.6,
                         time_mu_r=-4.0, time_sigma_r=1.6, time_pairing="min_r",
                         r_neq_t_ratio=0.75, adaptive_p=0.75, adaptive_c=1e-3,
                         guidance_omega=1.0, guidance_kappa=0.0, class_dropout=0.0)
  config.optim.update(name="adam", learning_rate=6e-4, b1=0.9, b2=0.999, weight_decay=0.0,
                      warmup_steps=0, warmup_epochs=200.0, schedule="constant", grad_clip=0.0)
  config.ema_decays = (0.99995, 0.9999, 0.9996)  # eval/sample ema_index 0: the release's choice.
  config.ema_every = 16
  config.train.update(global_batch_size=1024, num_steps=800_000, log_every=100,
                      checkpoint_every=10_000, sample_every=10_000)
  config.sample.update(num_samples=64, batch_size=64)
  config.eval.update(every_steps=50_000, num_samples=50_000, batch_size=1000, num_steps=(1,),
                     features="inception", ref_stats="")
  return config
