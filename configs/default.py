"""The embedded default: class-conditional MeanFlow on scikit-learn's digits, on a laptop CPU.

8x8 grayscale digits (real data shipped with scikit-learn), a small DiT with patch 2 (16 tokens),
a few minutes on 2 CPU cores. Run:  python main.py --config=configs/default.py --workdir=/tmp/digits
"""
from configs import base


def get_config():
  config = base.get_config()
  config.data.update(name="digits", image_size=8, channels=1, num_classes=10, random_flip=False)
  config.model.update(variant="S/2", depth=4, hidden_size=128, num_heads=4)
  config.meanflow.update(guidance_omega=1.0, guidance_kappa=0.0, class_dropout=0.1)
  config.optim.update(learning_rate=1e-3, warmup_steps=200)
  config.ema_decays = (0.995,)  # A short run: 0.999 would still remember the initialisation.
  config.train.update(global_batch_size=128, num_steps=1600, log_every=100, checkpoint_every=400,
                      sample_every=400)
  config.sample.update(num_samples=100, batch_size=128)
  # Pixel-space Frechet distance against the 297 held-out digits, at the end of training (a run
  # shortened with --config.train.num_steps still evaluates at its last step).
  config.eval.update(every_steps=config.train.num_steps, features="pixels", num_samples=1000,
                     batch_size=200)
  return config
