"""A tiny config for tests: digits, a 2-block DiT, a handful of steps."""
from configs import default


def get_config():
  config = default.get_config()
  config.model.update(depth=2, hidden_size=32, num_heads=2)
  config.train.update(global_batch_size=16, num_steps=4, log_every=2, checkpoint_every=2,
                      sample_every=0)
  config.sample.update(num_samples=16, batch_size=16)
  config.optim.warmup_steps = 0
  config.eval.update(every_steps=0, num_samples=32, batch_size=16, num_steps=(1, 2))
  return config
