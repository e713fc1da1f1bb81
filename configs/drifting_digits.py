"""Drifting Models on scikit-learn's digits: a one-step MLP generator on raw pixels, CPU.

docs/measurements.md: a 4x512 SiLU MLP, 10 classes x 64 real + 64 generated per step,
tau in {0.02, 0.05, 0.2}, 4000 steps. No guidance negatives (alpha = 1), so it compares directly
with the MeanFlow default (configs/default.py) on the same data.
  python main.py --config=configs/drifting_digits.py --workdir=/tmp/drift_digits
"""
from configs import default


def get_config():
  config = default.get_config()
  config.method = "drifting"
  config.model.update(name="mlp", mlp_widths=(512, 512, 512, 512))
  config.drifting.update(classes_per_step=10, num_pos=64, num_neg=64, num_unc=0, queue_len=128)
  config.optim.update(learning_rate=1e-3, warmup_steps=0)
  config.ema_decays = (0.999,)
  config.train.update(global_batch_size=128, num_steps=4000, checkpoint_every=1000,
                      sample_every=1000)
  config.eval.update(every_steps=4000, num_steps=(1,))  # One-step generator: 1-NFE only.
  return config
