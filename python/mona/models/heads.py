"""Training-only heads: representation (FPN-style, per-pixel), global projection + predictor,
local projection (GLCon). None of them is part of the exported inference weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RepresentationHead(nn.Module):
    """FPN-style fusion of the decoder maps into a ``dim``-d per-pixel embedding.

    Input: decoder maps (coarse to fine) with ``in_channels`` channels; each is projected by a 1x1
    conv to ``fpn_dim``, upsampled to the finest map's resolution divided by ``output_stride`` and
    summed; then conv3x3-BN-ReLU-conv1x1. Output ``[B, dim, H/output_stride, W/output_stride]`` in
    ``torch.channels_last`` memory format: ``mona_ext.contrast_loss`` gathers D-vectors of pixels, and
    its fast path wants them contiguous. Converting the ``fpn_dim``-channel input of the last 1x1 conv
    (64 channels) is 8x cheaper than converting its 512-channel output.
    """

    def __init__(
        self,
        in_channels: tuple[int, ...] = (128, 64, 32, 16),
        dim: int = 512,
        fpn_dim: int = 64,
        output_stride: int = 1,
    ):
        super().__init__()
        if output_stride not in (1, 2, 4, 8):
            raise ValueError(f"RepresentationHead: output_stride must be 1, 2, 4 or 8, got {output_stride}")
        self.output_stride = output_stride
        self.lateral = nn.ModuleList(nn.Conv2d(c, fpn_dim, 1) for c in in_channels)
        self.fuse = nn.Sequential(
            nn.Conv2d(fpn_dim, fpn_dim, 3, padding=1), nn.BatchNorm2d(fpn_dim), nn.ReLU(), nn.Conv2d(fpn_dim, dim, 1)
        )

    def forward(self, decoder: list[torch.Tensor]) -> torch.Tensor:
        return self.project_map(self.hidden(decoder))

    def project_map(self, hidden: torch.Tensor) -> torch.Tensor:
        """The last 1x1 convolution on the whole hidden map: ``[B, fpn_dim, h, w]`` -> ``[B, dim, h, w]``."""
        return self.fuse[-1](hidden)

    def project_rows(self, hidden: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """The last 1x1 convolution at some pixels only: the hidden map ``[B, fpn_dim, h, w]`` and flat
        pixel indices ``[n]`` (``b * h * w + y * w + x``) -> ``[n, dim]``, the rows of :meth:`project_map`
        (equal up to rounding: a matrix product instead of a convolution)."""
        conv = self.fuse[-1]
        rows = hidden.permute(0, 2, 3, 1).reshape(-1, hidden.shape[1]).index_select(0, pixels)
        return F.linear(rows, conv.weight.view(conv.out_channels, conv.in_channels), conv.bias)

    def hidden(self, decoder: list[torch.Tensor]) -> torch.Tensor:
        """Everything but the last 1x1 convolution: ``[B, fpn_dim, h, w]`` (channels-last)."""
        h, w = decoder[-1].shape[-2:]
        size = (h // self.output_stride, w // self.output_stride)
        acc = None
        for lat, feat in zip(self.lateral, decoder):
            y = F.interpolate(lat(feat), size=size, mode="bilinear", align_corners=False)
            acc = y if acc is None else acc + y
        return self.fuse[:-1](acc).contiguous(memory_format=torch.channels_last)


HEAD_NORMS = ("layer", "batch")


def _mlp(cin: int, hidden: int, cout: int, norm: str = "layer") -> nn.Sequential:
    """Linear - norm - ReLU - Linear. ``norm``: ``layer`` (LayerNorm, per sample) or ``batch`` (BatchNorm1d,
    ISD / BYOL's choice at batch 256 of diverse images). With a batch of 4-12 similar slices BatchNorm1d
    divides by a tiny across-batch spread: at initialisation on phantoms the GLCon KL's gradient on the
    encoder was 414x L_sup's with it, 6.9x with LayerNorm (benchmarks/probe_relational_gradients.py)."""
    if norm not in HEAD_NORMS:
        raise ValueError(f"heads: norm must be one of {HEAD_NORMS}, got {norm!r}")
    layer = nn.LayerNorm(hidden) if norm == "layer" else nn.BatchNorm1d(hidden)
    return nn.Sequential(nn.Linear(cin, hidden), layer, nn.ReLU(), nn.Linear(hidden, cout))


class GlobalProjectionHead(nn.Module):
    """Bottleneck ``[B, Cb, h, w]`` -> global average pool -> MLP -> ``[B, dim]``."""

    def __init__(self, in_channels: int = 256, dim: int = 512, hidden: int = 512, norm: str = "layer"):
        super().__init__()
        self.mlp = _mlp(in_channels, hidden, dim, norm)

    def forward(self, bottleneck: torch.Tensor) -> torch.Tensor:
        return self.mlp(bottleneck.mean(dim=(2, 3)))


class Predictor(nn.Module):
    """Student-only predictor on a projection: ``[B, dim]`` -> ``[B, dim]``."""

    def __init__(self, dim: int = 512, hidden: int = 512, norm: str = "layer"):
        super().__init__()
        self.mlp = _mlp(dim, hidden, dim, norm)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.mlp(z)


class LocalProjectionHead(nn.Module):
    """Crops of the finest decoder map ``[N, Cd, h, w]`` (e.g. 64x64) -> one ``[N, dim]`` vector per crop:
    conv3x3-BN-ReLU, global average pool, MLP."""

    def __init__(
        self, in_channels: int = 16, dim: int = 512, hidden: int = 512, conv_channels: int = 64, norm: str = "layer"
    ):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, conv_channels, 3, padding=1), nn.BatchNorm2d(conv_channels), nn.ReLU()
        )
        self.mlp = _mlp(conv_channels, hidden, dim, norm)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.conv(crops).mean(dim=(2, 3)))
