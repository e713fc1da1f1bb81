"""Drifting Models on a 2-D checkerboard: an MLP generator, raw coordinates as features, CPU.

docs/drifting.md (toy): MLP 3x256 SiLU, Adam 1e-3, 2048 real + 2048 generated per step,
tau = 0.05; here 512 + 512 per step (about a minute on 2 CPU cores) and the default temperatures
with distance normalisation (without it the field vanishes far from the data). Points are stored
as 1x1 images with 2 channels.
  python main.py --config=configs/drifting_toy.py --workdir=/tmp/drift_toy
"""
from configs import base


def get_config():
  config = base.get_config()
  config.method = "drifting"
  config.data.update(name="checkerboard", image_size=1, channels=2, num_classes=1, random_flip=False)
  config.model.update(name="mlp", mlp_widths=(256, 256, 256))
  config.drifting.update(classes_per_step=1, num_pos=512, num_neg=512, num_unc=0, queue_len=1024)
  config.optim.update(learning_rate=1e-3, b1=0.9, b2=0.999)
  config.ema_decays = (0.995,)
  config.train.update(global_batch_size=1024, num_steps=2000, log_every=100, checkpoint_every=1000,
                      sample_every=0)
  config.sample.update(num_samples=2048, batch_size=1024)
  return config
