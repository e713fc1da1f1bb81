"""A tiny U-Net MeanFlow learns the digits through the trainer's step (scripts/unet_digits.py).

The whole recipe at toy scale: augmentation labels as condition, dropout, v1 sampler, Adam with
warmup epochs, EMA every 4 steps. The untrained U-Net outputs ~0 (its last convolution starts at
1e-5 scale), so its 1-NFE samples are the noise: pixel FD to the digits ~11. After 200 steps of
batch 16 the FD must fall below a quarter of that (measured 1.5; the README's longer run: 0.98).
"""
import numpy as np

from scripts import unet_digits


def test_tiny_unet_meanflow_learns_digits():
  fd_untrained, fd_trained, _, _, losses = unet_digits.run(
      steps=200, batch=16, seed=0, num_samples=500, unet=unet_digits.TEST_UNET)
  print(f"1-NFE pixel FD: untrained {fd_untrained:.3f}, trained {fd_trained:.3f}")
  assert np.all(np.isfinite(losses))
  assert fd_untrained > 5.0, fd_untrained  # Noise against digits.
  assert fd_trained < 0.25 * fd_untrained, (fd_trained, fd_untrained)
