"""Class-wise adaptive pseudo-label thresholds (``mona.class_thresholds: adaptive``): the formula by
hand, the EMA of counts, the floor and cap, use in a MONA step, the log columns and exact resume."""

from __future__ import annotations

import csv

import pytest
import torch
from tinyconfig import tiny_run_config

from mona.errors import UsageError
from mona.train import train
from mona.train.checkpoint import load_checkpoint
from mona.train.thresholds import AdaptiveClassThresholds


def _labels(counts: dict[int, tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """A flat batch with, per class c, ``counts[c] = (predicted, of which confident)`` pixels."""
    pseudo, conf = [], []
    for c, (n, k) in counts.items():
        pseudo += [c] * n
        conf += [0.99] * k + [0.6] * (n - k)
    return torch.tensor(pseudo).view(1, 1, -1), torch.tensor(conf).view(1, 1, -1)


def test_thresholds_follow_flexmatch_normalised_by_how_often_each_class_is_predicted():
    ct = AdaptiveClassThresholds(4, momentum=0.0, floor=0.1)  # momentum 0: this step's counts only
    # class 0: 900 predicted, 90 % confident (the best); 1: 80 %; 2: 45 %; 3 never predicted
    ct.update(*_labels({0: (1000, 900), 1: (100, 80), 2: (20, 9)}), tau=0.97)
    beta = torch.tensor([1.0, 0.8 / 0.9, 0.45 / 0.9, 1.0])  # unseen class: the best status
    assert torch.allclose(ct.status(), beta.double())
    expected = (0.97 * beta / (2 - beta)).float()
    assert torch.allclose(ct.thresholds(0.97), expected)
    assert ct.thresholds(0.97)[0] == pytest.approx(0.97) and ct.thresholds(0.97)[2] == pytest.approx(0.97 / 3)
    # the floor and the cap: never below floor (unless tau is), never above tau
    high_floor = AdaptiveClassThresholds(4, momentum=0.0, floor=0.5)
    high_floor.update(*_labels({0: (1000, 900), 1: (100, 80), 2: (20, 9)}), tau=0.97)
    assert high_floor.thresholds(0.97)[2] == pytest.approx(0.5)
    assert torch.all(high_floor.thresholds(0.3) == 0.3)  # tau below the floor: tau itself


def test_counts_are_averaged_not_ratios():
    ct = AdaptiveClassThresholds(2, momentum=0.5, floor=0.0)
    ct.update(*_labels({0: (10, 10), 1: (2, 2)}), tau=0.9)  # class 1: 100 % of 2 pixels
    ct.update(*_labels({0: (10, 10), 1: (100, 0)}), tau=0.9)  # then 0 % of 100
    # EMA counts: predicted 0.5 * (0.5 * 2) + 0.5 * 100 = 50.5, confident 0.5 * (0.5 * 2) = 0.5
    assert ct.predicted[1].item() == pytest.approx(50.5) and ct.confident[1].item() == pytest.approx(0.5)
    assert ct.status()[1].item() == pytest.approx(0.5 / 50.5)  # the mean of ratios would say 0.5
    fresh = AdaptiveClassThresholds(2)
    assert fresh.thresholds(0.97).tolist() == pytest.approx([0.97, 0.97])  # before any step: the fixed threshold
    with pytest.raises(ValueError, match="momentum"):
        AdaptiveClassThresholds(2, momentum=1.0)
    other = AdaptiveClassThresholds(3)
    with pytest.raises(ValueError, match="shape"):
        other.load_state_dict(ct.state_dict())


def _cfg(cache, out, **kw):
    return tiny_run_config(cache, out, "mona", pseudo_warmup_iterations=0, **kw)


def test_adaptive_thresholds_in_a_mona_run_log_and_resume_exactly(tiny_cache, tmp_path):
    kw = {"mona.class_thresholds": "adaptive", "mona.threshold_floor": 0.3, "iterations": 6}
    full = train(_cfg(tiny_cache, tmp_path / "full", **kw), progress=False)
    with open(tmp_path / "full" / "train_log.csv") as fh:
        rows = list(csv.DictReader(fh))
    names = [c for c in rows[0] if c.startswith("thr_")]
    assert names == ["thr_RV", "thr_Myo", "thr_LV"]  # one per foreground class of the ACDC-layout cache
    values = [float(r[n]) for r in rows for n in names]
    assert all(0.3 - 1e-6 <= v <= 0.97 + 1e-6 for v in values)
    objs = load_checkpoint(tmp_path / "full" / "last.pt")["objects"]
    assert objs["class_thresholds"]["predicted"].sum() > 0
    # the last logged thresholds are those of the saved state (updated before the step used them)
    saved = AdaptiveClassThresholds(4, momentum=0.95, floor=0.3)
    saved.load_state_dict(objs["class_thresholds"])
    assert [float(rows[-1][n]) for n in names] == pytest.approx(saved.thresholds(0.97)[1:].tolist())
    part = train(_cfg(tiny_cache, tmp_path / "part", **kw), progress=False, stop_after=3)
    rest = train(_cfg(tiny_cache, tmp_path / "part", **kw), progress=False, resume=tmp_path / "part" / "last.pt")
    assert part.losses + rest.losses == full.losses
    b = load_checkpoint(tmp_path / "part" / "last.pt")["objects"]["class_thresholds"]
    assert all(torch.equal(objs["class_thresholds"][k], b[k]) for k in b)
    # the fixed default has neither the state nor the columns, and bad values are usage errors
    train(_cfg(tiny_cache, tmp_path / "fixed", iterations=1), progress=False)
    assert "class_thresholds" not in load_checkpoint(tmp_path / "fixed" / "last.pt")["objects"]
    with pytest.raises(UsageError, match="mona.class_thresholds"):
        _cfg(tiny_cache, tmp_path / "bad", **{"mona.class_thresholds": "flex"})
    with pytest.raises(UsageError, match="mona.threshold_momentum"):
        _cfg(tiny_cache, tmp_path / "bad", **{"mona.threshold_momentum": 1})
