"""Metrics vs medpy (the reference) on random and structured masks with anisotropic spacing;
empty-mask conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from medpy.metric import binary as mp

from mona.eval.metrics import asd_hd95, dice, nan_summary, volume_metrics


def _ball(shape, centre, radii):
    grids = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)) <= 1


def _cases():
    rng = np.random.default_rng(0)
    out = []
    for k in range(4):  # random masks, 2-D and 3-D
        shape = (24, 20, 7) if k % 2 else (30, 26)
        out.append((rng.random(shape) > 0.6, rng.random(shape) > 0.7, (1.4, 0.7, 6.0)[: len(shape)]))
    # structured: shifted / scaled ellipsoids, a ring vs a disc, a one-voxel object
    out.append(
        (_ball((40, 40, 10), (20, 20, 5), (8, 10, 3)), _ball((40, 40, 10), (22, 18, 5), (9, 8, 4)), (1.25, 1.25, 10.0))
    )
    ring = _ball((48, 48), (24, 24), (12, 12)) & ~_ball((48, 48), (24, 24), (7, 7))
    out.append((ring, _ball((48, 48), (25, 22), (12, 11)), (0.6, 1.8)))
    one = np.zeros((16, 16, 4), bool)
    one[3, 4, 1] = True
    out.append((one, _ball((16, 16, 4), (10, 10, 2), (4, 4, 1)), (2.0, 1.0, 5.0)))
    return out


@pytest.mark.parametrize("case", range(7))
def test_matches_medpy_in_mm_and_voxels(case):
    a, b, spacing = _cases()[case]
    asd, hd = asd_hd95(a, b, spacing)
    assert asd == pytest.approx(mp.assd(a, b, voxelspacing=spacing), abs=1e-6)
    assert hd == pytest.approx(mp.hd95(a, b, voxelspacing=spacing), abs=1e-6)
    asd_v, hd_v = asd_hd95(a, b, None)
    assert asd_v == pytest.approx(mp.assd(a, b), abs=1e-6)
    assert hd_v == pytest.approx(mp.hd95(a, b), abs=1e-6)
    assert dice(a, b) == pytest.approx(mp.dc(a, b), abs=1e-12)


def test_volume_metrics_per_class_match_medpy():
    rng = np.random.default_rng(1)
    gt = np.zeros((32, 32, 6), np.int64)
    gt[_ball(gt.shape, (16, 16, 3), (9, 9, 2))] = 3
    gt[_ball(gt.shape, (10, 22, 3), (4, 6, 2))] = 1
    pred = gt.copy()
    pred[rng.random(gt.shape) > 0.9] = 2
    sp = (1.1, 0.9, 7.5)
    m = volume_metrics(pred, gt, 4, sp)
    for c in (1, 3):
        assert m[c].dice == pytest.approx(mp.dc(pred == c, gt == c))
        assert m[c].asd == pytest.approx(mp.assd(pred == c, gt == c, sp), abs=1e-6)
        assert m[c].hd95 == pytest.approx(mp.hd95(pred == c, gt == c, sp), abs=1e-6)
    # class 2 is absent from the ground truth but predicted: the "one empty" convention
    assert m[2].dice == 0 and math.isnan(m[2].asd) and math.isnan(m[2].hd95) and m[2].gt_voxels == 0


def test_empty_conventions():
    z = np.zeros((8, 8, 3), bool)
    o = z.copy()
    o[2:5, 2:5, 1] = True
    assert dice(z, z) == 1.0 and asd_hd95(z, z, (1, 1, 1)) == (0.0, 0.0)
    for p, g in ((z, o), (o, z)):
        assert dice(p, g) == 0.0
        assert all(math.isnan(v) for v in asd_hd95(p, g, (1, 1, 1)))
    assert nan_summary([1.0, float("nan"), 3.0]) == (2.0, 2)
    mean, n = nan_summary([float("nan")])
    assert math.isnan(mean) and n == 0


def test_bad_arguments():
    a = np.ones((4, 4), bool)
    with pytest.raises(ValueError, match="shape"):
        dice(a, np.ones((4, 5), bool))
    with pytest.raises(ValueError, match="spacing must be 2 positive numbers"):
        asd_hd95(a, a, (1.0, 0.0))
