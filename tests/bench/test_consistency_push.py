"""benchmarks/consistency_push.py: the per-class first-order push of a logit gradient on log p(true class)."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.consistency_push import _push


def test_cross_entropy_gradient_pushes_the_true_class_up_by_the_closed_form():
    # CE: g = p - onehot(y), so -(g_y - sum_k p_k g_k) = (1 - p_y)^2 + sum_{k != y} p_k^2 > 0
    z = torch.tensor([[[[2.0]], [[0.5]], [[-1.0]]]])  # [1, 3, 1, 1]
    y = torch.tensor([[[1]]])
    p = torch.softmax(z, dim=1)[0, :, 0, 0]
    g = p.clone().view(1, 3, 1, 1)
    g[0, 1] -= 1
    want = (1 - p[1]) ** 2 + p[0] ** 2 + p[2] ** 2
    got = _push(z, g, y, 3)
    assert got[1] == pytest.approx(float(want), rel=1e-6)
    assert math.isnan(got[0]) and math.isnan(got[2])  # no pixel of those classes


def test_a_step_that_raises_another_class_lowers_the_true_class():
    torch.manual_seed(0)
    z = torch.randn(2, 4, 5, 5)
    y = torch.randint(0, 4, (2, 5, 5))
    g = torch.zeros_like(z)
    g[:, 3] = -1.0  # descent raises logit 3 everywhere
    p = torch.softmax(z, dim=1)
    got = _push(z, g, y, 4)
    for c in range(3):  # d log p_y = -p_3 < 0 at pixels of the other classes
        sel = y == c
        assert got[c] == pytest.approx(float(-p[:, 3][sel].mean()), rel=1e-5) and got[c] < 0
    # at class 3's own pixels: 1 - p_3 > 0
    assert got[3] == pytest.approx(float((1 - p[:, 3])[y == 3].mean()), rel=1e-5)


def test_pixels_with_a_negative_label_are_ignored():
    z = torch.zeros(1, 2, 1, 2)
    g = torch.zeros_like(z)
    g[0, 0, 0, 1] = 100.0  # a huge gradient at the ignored pixel only
    y = torch.tensor([[[0, -1]]])
    assert _push(z, g, y, 2)[0] == pytest.approx(0.0)
