"""Golden outputs of the official MeanFlow CIFAR-10 U-Net (py-meanflow's SongUNet), for tests.

Imports the official network from a LOCAL checkout (nothing of it is copied here) and writes
tests/golden/unet_tiny.npz: a tiny configuration's state dict (random weights, every tensor
redrawn so no layer is near zero), fixed inputs x, times (t, h = t - r) and augmentation labels,
and the float64 outputs with dropout off; plus the parameter count of the full-size CIFAR-10
network (model_configs "unet" with augment_dim 6, as trained with --use_edm_aug).

  git --git-dir=$(fetch github:Gsunshine/py-meanflow) archive HEAD meanflow | tar -x -C /tmp/pmf
  python scripts/make_unet_golden.py --official=/tmp/pmf/meanflow

Checked with py-meanflow commit 1f6d72d94247c8fdeb89489acca1a8007a6baf6c and torch 2.13 (CPU).
"""
import argparse
import os
import sys

import numpy as np

OFFICIAL_COMMIT = "1f6d72d94247c8fdeb89489acca1a8007a6baf6c"
# The tiny configuration; tests/test_unet.py builds the Flax network with the same values.
TINY = dict(img_resolution=8, in_channels=3, out_channels=3, model_channels=8, channel_mult=[1, 2],
            channel_mult_noise=2, num_blocks=1, attn_resolutions=[4], dropout=0.2,
            resample_filter=[1, 3, 3, 1], augment_dim=6, encoder_type="standard",
            decoder_type="standard")
# The released CIFAR-10 network (model_configs.MODEL_CONFIGS["unet"] + dropout + augment_dim).
FULL = dict(img_resolution=32, in_channels=3, out_channels=3, channel_mult_noise=2,
            resample_filter=[1, 3, 3, 1], channel_mult=[2, 2, 2], encoder_type="standard",
            decoder_type="standard", dropout=0.2, augment_dim=6)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--official", required=True, help="py-meanflow checkout's meanflow/ folder")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests",
                                                    "golden", "unet_tiny.npz"))
  args = parser.parse_args()
  import torch
  sys.path.insert(0, os.path.abspath(args.official))
  from models.unet import SongUNet  # pylint: disable=import-error

  full = SongUNet(**FULL)
  full_count = sum(p.numel() for p in full.parameters())
  print("full-size parameter count:", full_count)

  torch.manual_seed(0)
  net = SongUNet(**TINY).double().eval()
  with torch.no_grad():
    for name, p in net.named_parameters():
      # Random weights of a trained network's scale (1/sqrt(fan_in) for weights, norms near 1).
      fan_in = int(np.prod(p.shape[1:])) if p.ndim > 1 else 1
      if name.endswith("weight") and p.ndim == 1:
        p.copy_(1 + 0.2 * torch.randn_like(p))
      elif p.ndim == 1:
        p.copy_(0.2 * torch.randn_like(p))
      else:
        p.copy_(torch.randn_like(p) / np.sqrt(fan_in))
  n = 4
  x = torch.randn(n, 3, 8, 8, dtype=torch.float64)
  t = torch.tensor([1.0, 0.7, 0.3, 0.05], dtype=torch.float64)
  h = torch.tensor([1.0, 0.2, 0.0, 0.05], dtype=torch.float64)
  aug = torch.randn(n, 6, dtype=torch.float64) * 0.5
  with torch.no_grad():
    out = net(x, (t, h), aug)
    out_no_aug = net(x, (t, h), None)
  arrays = {f"param:{k}": v.numpy() for k, v in net.state_dict().items()}
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  np.savez_compressed(
      args.out, x=x.permute(0, 2, 3, 1).numpy(), t=t.numpy(), h=h.numpy(), aug=aug.numpy(),
      out=out.permute(0, 2, 3, 1).numpy(), out_no_aug=out_no_aug.permute(0, 2, 3, 1).numpy(),
      full_param_count=np.int64(full_count), official_commit=OFFICIAL_COMMIT,
      tiny_param_count=np.int64(sum(p.numel() for p in net.parameters())), **arrays)
  print("wrote", os.path.abspath(args.out), "output rms", float(out.square().mean().sqrt()))


if __name__ == "__main__":
  main()
