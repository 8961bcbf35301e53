"""``method: bcp`` / ``bcp_pretrain``: the copy-paste box, the mixed loss against a per-pixel reference,
the largest-component filter, one step of each stage recomputed by hand from the same draws, and the
two-stage pipeline (resume: test_methods.py; DDP: test_distributed.py)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from tinyconfig import tiny_run_config

from mona.augment import weak
from mona.errors import UsageError
from mona.train import run_stages
from mona.train.loop import setup
from mona.train.methods.base import Batch
from mona.train.methods.bcp import copy_paste_mask, largest_component, mix_loss


@pytest.mark.parametrize("h,w,fraction", [(12, 12, 2 / 3), (9, 15, 0.5), (5, 7, 0.8)])
def test_the_mask_is_one_box_of_the_fraction_inside_the_image(h, w, fraction):
    g = torch.Generator().manual_seed(0)
    ph, pw = round(fraction * h), round(fraction * w)
    corners = set()
    for _ in range(300):
        m = copy_paste_mask(h, w, fraction, g, torch.device("cpu"))
        assert m.shape == (h, w) and set(m.unique().tolist()) <= {0.0, 1.0}
        rows, cols = torch.nonzero(m == 0, as_tuple=True)
        top, left = int(rows.min()), int(cols.min())
        assert int((m == 0).sum()) == ph * pw  # one full box: every pixel of its bounding rectangle is 0
        assert bool((m[top : top + ph, left : left + pw] == 0).all())
        corners.add((top, left))
    # every position that keeps the box inside the image is drawn, the last ones included
    assert corners == {(t, l) for t in range(h - ph + 1) for l in range(w - pw + 1)}


def _ref_part(logits, target, keep):
    """Dice (every class, p^2 in the denominator, eps 1e-5) and mean CE over the kept pixels, by loops."""
    lp = torch.log_softmax(logits.double(), 1).permute(0, 2, 3, 1).numpy()  # [B, H, W, C]
    t, k = target.numpy(), keep.numpy()
    c = logits.shape[1]
    inter, psq, gs = np.zeros(c), np.zeros(c), np.zeros(c)
    ce, n = 0.0, 0
    for b, y, x in zip(*np.nonzero(k)):
        p = np.exp(lp[b, y, x])
        g = np.eye(c)[t[b, y, x]]
        inter += p * g
        psq += p * p
        gs += g
        ce -= lp[b, y, x, t[b, y, x]]
        n += 1
    dice = np.mean(1 - (2 * inter + 1e-5) / (psq + gs + 1e-5))
    return dice, ce / n


def test_mix_loss_is_dice_and_ce_of_each_part_on_its_pixels():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 6, 6, generator=g)
    ti, tp = torch.randint(0, 4, (2, 6, 6), generator=g), torch.randint(0, 4, (2, 6, 6), generator=g)
    m = copy_paste_mask(6, 6, 2 / 3, g, torch.device("cpu"))
    outside, inside = mix_loss(logits, ti, tp, m, dice_weight=0.3, ce_weight=0.7)
    keep = m.bool().expand(2, 6, 6)
    d, c = _ref_part(logits, ti, keep)
    assert float(outside) == pytest.approx(0.3 * d + 0.7 * c, rel=1e-5)
    d, c = _ref_part(logits, tp, ~keep)
    assert float(inside) == pytest.approx(0.3 * d + 0.7 * c, rel=1e-5)
    # what lies outside a part does not count: another target there changes nothing
    ti2 = ti.clone()
    ti2[~keep] = (ti[~keep] + 1) % 4
    assert torch.equal(mix_loss(logits, ti2, tp, m, 0.3, 0.7)[0], outside)


def test_largest_component_keeps_one_8_connected_region_per_class():
    lab = torch.zeros(2, 8, 8, dtype=torch.long)
    lab[0, 0:2, 0:2] = 1  # 4 pixels
    lab[0, 5:8, 5:8] = 1  # 9 pixels: the largest class-1 region
    lab[0, 2, 2] = 1  # touches the first only diagonally: 8-connected, so it is part of it (5 < 9)
    lab[0, 0, 7] = 2  # one class-2 region
    lab[1, 3, 3] = 3
    lab[1, 4, 4] = 3  # diagonal neighbours: one region, both kept
    lab[1, 0, 0] = 3
    out = largest_component(lab, num_classes=4)
    want = torch.zeros_like(lab)
    want[0, 5:8, 5:8] = 1
    want[0, 0, 7] = 2
    want[1, 3, 3] = want[1, 4, 4] = 3
    assert torch.equal(out, want)


def _cfg(cache, out, method, **kw):
    return tiny_run_config(cache, out, method, every=2, **kw)


def _batch(run, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(4, 1, 32, 32, generator=g)
    y = torch.randint(0, run.cache.num_classes, (4, 32, 32), generator=g)
    return Batch(x_l=x[:2], y_l=y[:2], x_u=x[2:])


def test_a_pretrain_step_is_the_copy_paste_of_one_labeled_half_into_the_other(tiny_cache, tmp_path):
    run = setup(_cfg(tiny_cache, tmp_path / "p", "bcp_pretrain", **{"dice_weight": 0.4, "ce_weight": 0.6}))
    m, batch = run.method, _batch(run)
    gen = torch.Generator()
    gen.set_state(m.aug_gen.get_state())  # the same draws as the step's
    torch.manual_seed(7)  # and the same dropout masks
    loss, parts = m.step(batch)
    torch.manual_seed(7)
    x, y = weak(batch.x_l, batch.y_l, gen, run.cfg.augment)
    mask = copy_paste_mask(32, 32, 2 / 3, gen, torch.device("cpu"))
    mixed = x[:1] * mask + x[1:] * (1 - mask)
    logits = m.student(mixed, with_heads=False).logits
    keep = mask.bool().expand(1, 32, 32)
    want = 0.0
    for target, k in ((y[:1], keep), (y[1:], ~keep)):
        d, c = _ref_part(logits.detach(), target, k)
        want += 0.4 * d + 0.6 * c
    assert float(loss.detach()) == pytest.approx(want, rel=1e-5) and parts["sup"] == pytest.approx(want, rel=1e-5)
    assert torch.equal(m.aug_gen.get_state(), gen.get_state())


@pytest.mark.parametrize("u_weight", [0.5, 0.0])
def test_a_bcp_step_mixes_labeled_and_unlabeled_both_ways_with_the_teachers_labels(tiny_cache, tmp_path, u_weight):
    run = setup(_cfg(tiny_cache, tmp_path / f"b{u_weight}", "bcp", **{"bcp.u_weight": u_weight}))
    m, batch = run.method, _batch(run, 3)
    with torch.no_grad():  # a teacher unlike the student, so that pseudo-labels are not the student's
        for p in m.teacher.parameters():
            p.add_(0.1 * torch.randn_like(p))
    gen = torch.Generator()
    gen.set_state(m.aug_gen.get_state())
    torch.manual_seed(7)  # the same dropout masks in the student's two passes
    loss, parts = m.step(batch)
    torch.manual_seed(7)
    from mona.augment import random_transform

    a = run.cfg.augment
    x = torch.cat([batch.x_l, batch.x_u])
    t = random_transform(4, 32, 32, gen, rotate_deg=a.rotate_deg, flip=a.flip, scale=a.crop_scale, device=x.device)
    xw, yl = t.apply_image(x), t[:2].apply_label(batch.y_l)
    with torch.no_grad():
        pseudo = m.teacher(xw[2:], with_heads=False).logits.argmax(1)
    mask = copy_paste_mask(32, 32, 2 / 3, gen, torch.device("cpu"))
    la, lb, ua, ub = xw[0:1], xw[1:2], xw[2:3], xw[3:4]
    out_unl = m.student(ua * mask + la * (1 - mask), with_heads=False).logits.detach()
    out_l = m.student(lb * mask + ub * (1 - mask), with_heads=False).logits.detach()
    keep = mask.bool().expand(1, 32, 32)

    def part(logits, target, k):
        d, c = _ref_part(logits, target, k)
        return 0.5 * d + 0.5 * c

    sup = part(out_unl, yl[0:1], ~keep) + part(out_l, yl[1:2], keep)  # the labeled parts: pasted box, outside
    unl = part(out_unl, pseudo[0:1], keep) + part(out_l, pseudo[1:2], ~keep)
    assert parts["sup"] == pytest.approx(sup, rel=1e-5) and parts["unl"] == pytest.approx(unl, rel=1e-5)
    assert float(loss.detach()) == pytest.approx(sup + u_weight * unl, rel=1e-5)


def test_bcp_checks_its_batch_and_settings(tiny_cache, tmp_path):
    with pytest.raises(UsageError, match=r"bcp.patch_fraction must be in \(0, 1\), got 1"):
        _cfg(tiny_cache, tmp_path / "x", "bcp", **{"bcp.patch_fraction": 1})
    with pytest.raises(UsageError, match="bcp.u_weight must be >= 0"):
        _cfg(tiny_cache, tmp_path / "x", "bcp", **{"bcp.u_weight": -1})
    with pytest.raises(UsageError, match=r"data.labeled_bs must be even and half of data.batch_size, got "):
        _cfg(tiny_cache, tmp_path / "x", "bcp", **{"data.batch_size": 6, "data.labeled_bs": 2})
    with pytest.raises(UsageError, match=r"bcp_pretrain .* data.labeled_bs must be even, got data.labeled_bs 1"):
        _cfg(tiny_cache, tmp_path / "x", "bcp_pretrain", **{"data.labeled_bs": 1})
    with pytest.raises(UsageError, match="pretrain_iterations .* applies to method: mona or bcp only"):
        _cfg(tiny_cache, tmp_path / "x", "unimatch", pretrain_iterations=2)


def test_bcp_with_pretraining_runs_both_stages_and_starts_from_stage_1(tiny_cache, tmp_path):
    out = tmp_path / "two"
    results = run_stages(_cfg(tiny_cache, out, "bcp", iterations=3, pretrain_iterations=2), progress=False)
    assert [r.out_dir.name for r in results] == ["pretrain_bcp", "two"]
    from mona.train.checkpoint import load_checkpoint

    ck = load_checkpoint(out / "last.pt")
    assert ck["method"] == "bcp" and ck["config"]["init_from"].endswith("pretrain_bcp/last.pt")
    assert load_checkpoint(out / "pretrain_bcp" / "last.pt")["method"] == "bcp_pretrain"
    with open(out / "train_log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3
    for r in rows:  # the log's total is the weighted sum of its parts
        assert float(r["loss"]) == pytest.approx(float(r["sup"]) + 0.5 * float(r["unl"]), rel=1e-5)
        assert 0 <= float(r["pl_precision"]) <= 1 and math.isfinite(float(r["gn_unl"]))
