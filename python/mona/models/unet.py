"""SSL4MIS-compatible 2-D UNet (channels 16-32-64-128-256, encoder dropout .05/.1/.2/.3/.5).

Block: conv3x3-BN-LeakyReLU-dropout-conv3x3-BN-LeakyReLU; down: maxpool 2 + block; up: 1x1 conv,
bilinear x2 upsampling, concatenation with the skip, block (dropout 0); output: conv3x3 to logits.
The forward returns a :class:`UNetOutput` with the maps the heads need.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class UNetOutput:
    """logits ``[B, C, H, W]``; bottleneck ``[B, 256, H/16, W/16]``; decoder: the decoder maps from
    coarse to fine, ``[B, 128, H/8, W/8]``, ``[B, 64, H/4, W/4]``, ``[B, 32, H/2, W/2]``, ``[B, 16, H, W]``
    (for the default channels); logits_fp ``[B, C, H, W]``: the decoder on dropped-out encoder maps."""

    logits: torch.Tensor
    bottleneck: torch.Tensor
    decoder: list[torch.Tensor]
    logits_fp: torch.Tensor | None = None  # the feature-perturbation stream (``feature_perturbation`` > 0)


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, dropout: float):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1),
            nn.BatchNorm2d(cout),
            nn.LeakyReLU(),
            nn.Dropout(dropout),
            nn.Conv2d(cout, cout, 3, padding=1),
            nn.BatchNorm2d(cout),
            nn.LeakyReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class UpBlock(nn.Module):
    def __init__(self, cin: int, cskip: int, cout: int, dropout: float = 0.0):
        super().__init__()
        self.reduce = nn.Conv2d(cin, cskip, 1)
        self.block = ConvBlock(cskip * 2, cout, dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(self.reduce(x), size=skip.shape[-2:], mode="bilinear", align_corners=True)
        return self.block(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """2-D UNet. Input ``[B, in_channels, H, W]`` with H, W divisible by 16."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 4,
        channels: tuple[int, ...] = (16, 32, 64, 128, 256),
        dropout: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5),
    ):
        super().__init__()
        if len(channels) != 5 or len(dropout) != 5:
            raise ValueError(f"UNet: need 5 channels and 5 dropout rates, got {channels}, {dropout}")
        if num_classes < 2:
            raise ValueError(f"UNet: num_classes must be >= 2, got {num_classes}")
        self.channels, self.num_classes = tuple(channels), num_classes
        c = channels
        self.inc = ConvBlock(in_channels, c[0], dropout[0])
        self.downs = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), ConvBlock(c[i], c[i + 1], dropout[i + 1])) for i in range(4)
        )
        self.ups = nn.ModuleList(UpBlock(c[4 - i], c[3 - i], c[3 - i]) for i in range(4))
        self.out_conv = nn.Conv2d(c[0], num_classes, 3, padding=1)

    def forward(self, x: torch.Tensor, feature_perturbation: float = 0.0) -> UNetOutput:
        """``feature_perturbation`` p > 0 (UniMatch's feature-perturbation stream): the decoder also runs
        on the encoder's maps (every skip and the bottleneck) under channel dropout ``Dropout2d(p)``, in
        the same batched pass; its logits are ``logits_fp``. The other fields are the clean stream's."""
        if x.ndim != 4 or x.shape[-1] % 16 or x.shape[-2] % 16:
            raise ValueError(f"UNet: expected [B, C, H, W] with H, W divisible by 16, got {tuple(x.shape)}")
        if not 0 <= feature_perturbation < 1:
            raise ValueError(f"UNet: feature_perturbation must be in [0, 1), got {feature_perturbation}")
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        bottleneck = skips[-1]
        if feature_perturbation > 0:
            skips = [torch.cat([s, F.dropout2d(s, feature_perturbation, self.training)]) for s in skips]
        y = skips[-1]
        decoder = []
        for i, up in enumerate(self.ups):
            y = up(y, skips[3 - i])
            decoder.append(y)
        logits = self.out_conv(y)
        if feature_perturbation > 0:
            b = x.shape[0]
            logits, logits_fp = logits[:b], logits[b:]
            return UNetOutput(logits, bottleneck, [d[:b] for d in decoder], logits_fp)
        return UNetOutput(logits, bottleneck, decoder)
