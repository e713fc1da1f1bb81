"""Improved MeanFlow (iMF) on scikit-learn's digits, on a laptop CPU: guidance chosen at sampling.

The same data, DiT size and optimizer as the MeanFlow default (configs/default.py): 4 blocks of
width 128 (2 shared, 1 per head), patch 2, batch 128. Guidance is a condition of the network
(omega ~ 1/omega on [1, 8), an interval [t_min, t_max]), so one trained model samples at any omega:

  python main.py --config=configs/imf_digits.py --workdir=/tmp/imf_digits
  python main.py --config=configs/imf_digits.py --workdir=/tmp/imf_digits --mode=eval \
      --config.eval.cfg_scales='(1.0, 1.5, 2.0, 3.0)'
"""
from configs import default


def get_config():
  config = default.get_config()
  config.method = "imf"
  config.model.update(name="dit_incontext", variant="B/2", depth=4, hidden_size=128, num_heads=4,
                      head_depth=1)
  config.sample.update(cfg_scale=1.5)
  config.eval.update(cfg_scale=1.5)
  return config
