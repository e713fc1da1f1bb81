"""CIFAR-10 MeanFlow, the paper's (v0) time sampler; otherwise as configs/cifar10_unet.py.

t and r both ~ logit-normal(-2, 2), t = max and r = min of the two draws, r = t on 25% of the batch
(py-meanflow scripts/cifar10_v0.sh). Paper Table 3: 1-NFE FID 2.92.
"""
from configs import cifar10_unet


def get_config():
  config = cifar10_unet.get_config()
  config.meanflow.update(time_mu=-2.0, time_sigma=2.0, time_mu_r=-2.0, time_sigma_r=2.0,
                         time_pairing="sort")
  return config
