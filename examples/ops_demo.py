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

means, counts = torch.ops.mona.class_mean(features, labels, 4, None, -1)
ref_means, ref_counts = reference.class_mean(features, labels, 4)
means.square().sum().backward()
print(f"class_mean on {device}: prototypes {tuple(means.shape)}, pixels per class {counts.tolist()}")
print(
    f"  max |mona - reference| = {(means - ref_means).abs().max().item():.2e}, "
    f"grad {tuple(features.grad.shape)} (channels-last kept: "
    f"{features.grad.is_contiguous(memory_format=torch.channels_last)})"
)

# The anatomical contrastive loss (ReCo / MONA "tailness"), fused: prototypes, adaptive negative
# sampling and InfoNCE without materialising the Q x (M+1) x D keys.
prob = torch.softmax(torch.randn(2, 4, 32, 32, device=device), 1)
gen = torch.Generator(device).manual_seed(0)
loss = mona_ext.contrast_loss(features, labels, 4, prob=prob, num_queries=64, num_negatives=128, generator=gen)
loss.backward()
print(f"contrast_loss = {loss.item():.4f} (64 queries x 128 negatives per class)")

# The equivariance loss: symmetric per-pixel KL between two class-logit maps.
a = torch.randn(2, 4, 32, 32, device=device, requires_grad=True)
b = torch.randn(2, 4, 32, 32, device=device)
print(f"pixel_kl = {mona_ext.pixel_kl(a, b).item():.4f}")
