"""A tiny tour of the fused ops on random data (CPU, or CUDA when available)."""

import torch

import mona_ext
from mona_ext import reference

device = "cuda" if torch.cuda.is_available() else "cpu"
torch.manual_seed(0)
# A batch of 2 feature maps with 64 channels, channels-last as a conv net can emit it.
features = torch.randn(2, 64, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
features.requires_grad_(True)
labels = torch.randint(-1, 4, (2, 32, 32), device=device)  # -1 = ignore

means, counts = torch.ops.mona.class_mean(features, labels, None, 4, -1)
ref_means, ref_counts = reference.class_mean(features, labels, 4)
means.square().sum().backward()
print(f"class_mean on {device}: prototypes {tuple(means.shape)}, pixels per class {counts.tolist()}")
print(f"  max |mona - reference| = {(means - ref_means).abs().max().item():.2e}, "
      f"grad {tuple(features.grad.shape)} (channels-last kept: "
      f"{features.grad.is_contiguous(memory_format=torch.channels_last)})")
