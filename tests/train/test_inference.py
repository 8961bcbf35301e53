"""Slice-wise inference is reassembled into the original volume geometry (no transposes, any shape)."""

from __future__ import annotations

import numpy as np
import torch

from mona.eval.inference import predict_volume


class ThresholdOracle(torch.nn.Module):
    """Two-class logits from the normalised intensity: foreground where x > 0.5."""

    def forward(self, x):
        return type("Out", (), {"logits": torch.cat([0.5 - x, x - 0.5], dim=1) * 100})()


def test_reassembly_matches_original_geometry():
    rng = np.random.default_rng(0)
    lab = np.zeros((50, 74, 3), np.int64)
    yy, xx = np.meshgrid(np.arange(50), np.arange(74), indexing="ij")
    for z in range(3):
        for _ in range(3):
            cy, cx = rng.integers(10, 40), rng.integers(10, 64)
            lab[:, :, z][(yy - cy) ** 2 + (xx - cx) ** 2 < 40] = 1
    image = lab.astype(np.float32) * 100 + 7
    pred = predict_volume(ThresholdOracle(), image, normalisation={"kind": "minmax"}, size=64)
    assert pred.shape == lab.shape
    for z in range(3):
        p, g = pred[:, :, z] == 1, lab[:, :, z] == 1
        assert 2 * np.logical_and(p, g).sum() / (p.sum() + g.sum()) > 0.95
    # a transposed or flipped reassembly would not overlap
    flipped = pred[::-1, :, :] == 1
    assert 2 * np.logical_and(flipped, lab == 1).sum() / (flipped.sum() + (lab == 1).sum()) < 0.5
