"""Distribution alignment of the teacher's probabilities (``mona.distribution_alignment``): the formula
by hand, the EMA of sums, identity before any update, use in a MONA run, the log columns and exact resume."""

from __future__ import annotations

import csv

import pytest
import torch
from tinyconfig import tiny_run_config

from mona.errors import UsageError
from mona.train import train
from mona.train.alignment import DistributionAlignment
from mona.train.checkpoint import load_checkpoint


def _prob(rows: list[list[float]]) -> torch.Tensor:
    """Pixels' probabilities ``rows [N][C]`` as a ``[1, C, 1, N]`` map."""
    return torch.tensor(rows, dtype=torch.float64).t().reshape(1, len(rows[0]), 1, len(rows))


def test_alignment_scales_each_class_by_labeled_share_over_predicted_share():
    da = DistributionAlignment(3, momentum=0.0)  # this step's sums only
    labels = torch.tensor([0] * 6 + [1] * 3 + [2] * 1).view(1, 1, 10)  # labeled shares 0.6 / 0.3 / 0.1
    prob = _prob([[0.9, 0.08, 0.02], [0.7, 0.28, 0.02], [0.5, 0.44, 0.06], [0.3, 0.6, 0.1]])
    da.update(labels, prob)
    pred_share = torch.tensor([2.4, 1.4, 0.2], dtype=torch.float64) / 4  # the column sums over 4 pixels
    ratio = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64) / pred_share
    assert torch.allclose(da.ratio(), ratio)
    q = da.align(prob)
    by_hand = [[p * r for p, r in zip(row, ratio.tolist())] for row in [[0.5, 0.44, 0.06]]]
    expected = torch.tensor(by_hand[0]) / sum(by_hand[0])
    assert torch.allclose(q[0, :, 0, 2], expected.double())
    assert torch.allclose(q.sum(dim=1), torch.ones(1, 1, 4, dtype=torch.float64))
    # the under-predicted tail class (share 0.1 labeled, 0.05 predicted) gains on every pixel
    assert torch.all(q[:, 2] > prob[:, 2])
    # a teacher whose mean prediction already is the labeled prior is left alone
    same = DistributionAlignment(3, momentum=0.0)
    same.update(labels, _prob([[0.6, 0.3, 0.1]] * 5))
    assert torch.allclose(same.align(prob), prob)


def test_sums_are_averaged_identity_before_an_update_and_state_checks():
    fresh = DistributionAlignment(2)
    prob = _prob([[0.8, 0.2], [0.1, 0.9]])
    assert torch.equal(fresh.align(prob), prob / prob.sum(dim=1, keepdim=True))
    assert fresh.ratio().tolist() == [1.0, 1.0]
    da = DistributionAlignment(2, momentum=0.5)
    da.update(torch.zeros(1, 1, 4, dtype=torch.long), _prob([[1.0, 0.0]] * 2))  # all class 0
    da.update(torch.ones(1, 1, 4, dtype=torch.long), _prob([[0.0, 1.0]] * 6))
    # EMA sums: labeled 0.5 * (0.5 * 4) = 1 / 0.5 * 4 = 2; predicted 0.5 * (0.5 * 2) = 0.5 / 0.5 * 6 = 3
    assert da.labeled.tolist() == pytest.approx([1.0, 2.0]) and da.predicted.tolist() == pytest.approx([0.5, 3.0])
    assert da.ratio().tolist() == pytest.approx([(1 / 3) / (0.5 / 3.5), (2 / 3) / (3 / 3.5)])
    with pytest.raises(ValueError, match="momentum"):
        DistributionAlignment(2, momentum=1.0)
    with pytest.raises(ValueError, match=r"prob must be \[B, 2, H, W\]"):
        da.update(torch.zeros(1, 1, 4, dtype=torch.long), torch.rand(1, 3, 1, 4))
    with pytest.raises(ValueError, match="shape"):
        DistributionAlignment(3).load_state_dict(da.state_dict())


def _cfg(cache, out, **kw):
    return tiny_run_config(cache, out, "mona", pseudo_warmup_iterations=0, **kw)


def test_alignment_in_a_mona_run_logs_and_resumes_exactly(tiny_cache, tmp_path):
    kw = {"mona.distribution_alignment": True, "iterations": 6}
    full = train(_cfg(tiny_cache, tmp_path / "full", **kw), progress=False)
    with open(tmp_path / "full" / "train_log.csv") as fh:
        rows = list(csv.DictReader(fh))
    names = [c for c in rows[0] if c.startswith("da_ratio_")]
    assert names == ["da_ratio_background", "da_ratio_RV", "da_ratio_Myo", "da_ratio_LV"]
    assert all(float(r[n]) > 0 for r in rows for n in names)
    objs = load_checkpoint(tmp_path / "full" / "last.pt")["objects"]
    assert objs["distribution_alignment"]["labeled"].sum() > 0
    saved = DistributionAlignment(4, momentum=0.99)
    saved.load_state_dict(objs["distribution_alignment"])
    assert [float(rows[-1][n]) for n in names] == pytest.approx(saved.ratio().tolist())
    # alignment changes the pseudo-labels, so the run differs from the default one
    plain = train(_cfg(tiny_cache, tmp_path / "plain", iterations=6), progress=False)
    assert plain.losses != full.losses
    assert "distribution_alignment" not in load_checkpoint(tmp_path / "plain" / "last.pt")["objects"]
    part = train(_cfg(tiny_cache, tmp_path / "part", **kw), progress=False, stop_after=3)
    rest = train(_cfg(tiny_cache, tmp_path / "part", **kw), progress=False, resume=tmp_path / "part" / "last.pt")
    assert part.losses + rest.losses == full.losses
    b = load_checkpoint(tmp_path / "part" / "last.pt")["objects"]["distribution_alignment"]
    assert all(torch.equal(objs["distribution_alignment"][k], b[k]) for k in b)
    with pytest.raises(UsageError, match="mona.alignment_momentum"):
        _cfg(tiny_cache, tmp_path / "bad", **{"mona.alignment_momentum": 1})
