"""The semi-supervised stabilisers and controls (issue 22): ramp-up and EMA warm-up schedules, the
pseudo-label warm-up, eval_model (student / teacher / auto) export, per-term gradient norms,
pseudo-label diagnostics, the per-pixel L_unsup mask, the L_eqv pass's frozen BatchNorm statistics,
the mean-teacher consistency, supervised_strong's augmentation, the MLP heads' norm and the
labeled-set override."""

from __future__ import annotations

import csv
import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from tinyconfig import SMALL

from mona.augment import AugmentConfig, random_contrast_brightness, weak
from mona.models import build_model
from mona.train import load_config, train
from mona.train.checkpoint import load_checkpoint, unet_state
from mona.train.loop import encoder_parameters, term_gradient_norms
from mona.train.losses import pixel_masked_ce
from mona.train.methods.base import ema_decay_at, frozen_bn_statistics, sigmoid_rampup
from mona.train.methods.mean_teacher import consistency_loss


def _cfg(cache, out, method, **kw):
    ov = [
        f"data.cache={cache}",
        f"out_dir={out}",
        "data.labeled_patients=1",
        "data.batch_size=4",
        "val_every=2",
        "log_every=1",
        "checkpoint_every=2",
        "threads=1",
        "device=cpu",
        f"method={method}",
    ]
    ov += [f"{k}={v}" for k, v in {**SMALL, **kw}.items()]
    return load_config(None, ov)


def _rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_sigmoid_rampup_follows_ssl4mis():
    assert sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(50, 100) == pytest.approx(math.exp(-1.25))
    assert sigmoid_rampup(90, 100) == pytest.approx(math.exp(-5 * 0.01))
    assert sigmoid_rampup(100, 100) == sigmoid_rampup(1000, 100) == 1.0
    assert sigmoid_rampup(0, 0) == 1.0  # rampup_iterations 0: no ramp-up
    values = [sigmoid_rampup(t, 40) for t in range(41)]
    assert values == sorted(values)  # monotone


def test_rampup_and_warmup_defaults_are_fractions_of_the_stage(tiny_cache, tmp_path):
    cfg = _cfg(tiny_cache, tmp_path, "mona", iterations=300)
    assert (cfg.rampup, cfg.pseudo_warmup) == (120, 30)
    cfg = _cfg(tiny_cache, tmp_path, "mona", iterations=300, rampup_iterations=0, pseudo_warmup_iterations=7)
    assert (cfg.rampup, cfg.pseudo_warmup) == (0, 7)
    with pytest.raises(ValueError, match="rampup_iterations must be >= 0"):
        _cfg(tiny_cache, tmp_path, "mona", rampup_iterations=-1)
    with pytest.raises(ValueError, match="eval_model must be one of"):
        _cfg(tiny_cache, tmp_path, "mona", eval_model="best")
    with pytest.raises(ValueError, match="eval_model 'teacher' needs a method with an EMA teacher"):
        _cfg(tiny_cache, tmp_path, "supervised_strong", eval_model="teacher")
    with pytest.raises(ValueError, match="mean_teacher.consistency must be one of"):
        _cfg(tiny_cache, tmp_path, "mean_teacher", **{"mean_teacher.consistency": "kl"})


def test_mean_teacher_weight_follows_its_consistency_unless_set(tiny_cache, tmp_path):
    # default: CE on confident labels at 1; "mse" alone gets SSL4MIS's 0.1; an explicit weight wins
    assert (lambda m: (m.consistency, m.weight))(_cfg(tiny_cache, tmp_path, "mean_teacher").mean_teacher) == ("ce", 1.0)
    mse = _cfg(tiny_cache, tmp_path, "mean_teacher", **{"mean_teacher.consistency": "mse"}).mean_teacher
    assert mse.weight == 0.1
    set_ = _cfg(tiny_cache, tmp_path, "mean_teacher", **{"mean_teacher.consistency": "mse", "mean_teacher.weight": 2})
    assert set_.mean_teacher.weight == 2
    with pytest.raises(ValueError, match="mean_teacher.weight must be >= 0"):
        _cfg(tiny_cache, tmp_path, "mean_teacher", **{"mean_teacher.weight": -1})


def test_ema_decay_warms_up_like_ssl4mis():
    assert ema_decay_at(0, 0.99, True) == 0.0  # the first update copies the student
    assert ema_decay_at(1, 0.99, True) == pytest.approx(0.5)
    assert ema_decay_at(9, 0.99, True) == pytest.approx(0.9)
    assert ema_decay_at(500, 0.99, True) == 0.99
    assert ema_decay_at(0, 0.99, False) == 0.99


def test_pixel_masked_ce_averages_the_confident_pixels_ce_over_all_pixels():
    torch.manual_seed(0)
    logits, pseudo = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    conf = torch.full((2, 4, 4), 0.5)
    conf[0, 0, :3] = 0.99
    conf[1, 2, 1] = 0.97
    ce = F.cross_entropy(logits, pseudo, reduction="none")
    expected = (ce[0, 0, :3].sum() + ce[1, 2, 1]) / 32
    assert pixel_masked_ce(logits, pseudo, conf, 0.97).item() == pytest.approx(expected.item(), rel=1e-6)


def test_mean_teacher_consistency_against_hand_written_formulas():
    torch.manual_seed(1)
    s = torch.randn(2, 4, 3, 3)
    p = torch.softmax(torch.randn(2, 4, 3, 3) * 3, dim=1)
    mse = ((torch.softmax(s, 1) - p) ** 2).sum() / s.numel()
    assert consistency_loss(s, p, "mse", 0.95).item() == pytest.approx(mse.item(), rel=1e-6)
    conf, target = p.max(1)
    total = sum(
        -torch.log_softmax(s[b, :, i, j], 0)[target[b, i, j]] * (conf[b, i, j] >= 0.9)
        for b in range(2)
        for i in range(3)
        for j in range(3)
    )
    assert consistency_loss(s, p, "ce", 0.9).item() == pytest.approx((total / 18).item(), rel=1e-5)


def test_frozen_bn_statistics_normalise_with_the_batch_and_leave_running_statistics():
    bn = torch.nn.BatchNorm2d(3).train()
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 1), bn)
    before = (bn.running_mean.clone(), bn.running_var.clone())
    x = torch.randn(4, 1, 5, 5) * 3 + 2
    with frozen_bn_statistics(model):
        y = model(x)
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])
    assert bn.momentum == 0.1  # restored
    # batch statistics were used (train mode): per-channel mean ~0
    assert y.mean(dim=(0, 2, 3)).abs().max() < 1e-5
    model(x)  # outside the context the statistics move again
    assert not torch.equal(bn.running_mean, before[0])


def test_supervised_strong_is_the_weak_view_with_contrast_and_brightness(tiny_cache, tmp_path):
    from mona.data.dataset import SliceCache
    from mona.train.loop import setup

    run = setup(_cfg(tiny_cache, tmp_path / "s", "supervised_strong", iterations=2))
    x, y = SliceCache(tiny_cache).load_batch(run.split.labeled[:3])
    run.method.aug_gen = torch.Generator().manual_seed(7)
    xs, ys = run.method.augment(x, y)
    ref_gen = torch.Generator().manual_seed(7)
    xw, yw = weak(x, y, ref_gen, AugmentConfig())
    xr = random_contrast_brightness(xw, ref_gen, contrast=(0.75, 1.25), brightness=0.1)
    assert torch.equal(ys, yw) and torch.allclose(xs, xr)
    assert not torch.allclose(xs, xw)  # the intensity change happened


def test_term_gradient_norms_match_a_direct_computation():
    meta = {"num_classes": 3, "channels": [4, 8, 8, 8, 8], "dropout": [0.0] * 5}
    torch.manual_seed(0)
    student = build_model(meta)
    x = torch.randn(2, 1, 16, 16)
    logits = student(x, with_heads=False).logits
    a, b = logits[:, 0].mean() * 3, (logits[:, 1] ** 2).mean()
    fake = SimpleNamespace(student=student, kept_terms={"a": a, "b": b})
    got = term_gradient_norms(fake)
    params = encoder_parameters(fake)
    for name, t in (("a", a), ("b", b)):
        g = torch.autograd.grad(t, params, retain_graph=True)
        assert got[f"gn_{name}"] == pytest.approx(float(torch.cat([v.flatten() for v in g]).norm()), rel=1e-5)
    # the encoder only: no decoder parameter is among them
    assert {id(p) for p in params}.isdisjoint(id(p) for p in student.unet.ups.parameters())


def test_mona_logs_gradient_norms_pseudo_label_quality_and_the_ramp(tiny_cache, tmp_path):
    train(_cfg(tiny_cache, tmp_path / "m", "mona", iterations=4, rampup_iterations=4), progress=False)
    rows = _rows(tmp_path / "m" / "train_log.csv")
    assert [float(r["ramp"]) for r in rows] == pytest.approx([sigmoid_rampup(t, 4) for t in range(4)])
    for r in rows:
        for term in ("sup", "eqv", "contrast"):
            assert float(r[f"gn_{term}"]) > 0, (term, r)
        assert 0 <= float(r["pl_confident"]) <= 1
        assert 0 <= float(r["pl_dice_LV"]) <= 1
        # the contrastive term's pseudo-labels (weak threshold 0.7 <= 0.97): at least L_unsup's
        assert float(r["pl_recall_LV"]) <= float(r["pl_wrecall_LV"]) <= 1
        assert float(r["pl_against_LV"]) <= float(r["pl_wagainst_LV"]) <= 1
    # the pseudo-label warm-up (default 10 % of 4 iterations = 0): L_unsup from the start here; with a
    # longer warm-up its column stays empty until the teacher has trained
    train(_cfg(tiny_cache, tmp_path / "w", "mona", iterations=4, pseudo_warmup_iterations=2), progress=False)
    rows = _rows(tmp_path / "w" / "train_log.csv")
    assert [r["unsup"] == "" for r in rows] == [True, True, False, False]


def test_pseudo_label_quality_against_known_labels():
    from mona.train.methods.base import Method

    fake = SimpleNamespace(
        y_u_diagnostic=torch.tensor([[[0, 1, 1, 2]]]),
        ctx=SimpleNamespace(cache=SimpleNamespace(class_names=["bg", "A", "B"])),
        num_classes=3,
        diagnostics={},
    )
    pseudo = torch.tensor([[[0, 1, 2, 2]]])
    conf = torch.tensor([[[0.99, 0.99, 0.5, 0.99]]])
    Method.log_pseudo_quality(fake, pseudo, conf, 0.97)
    d = fake.diagnostics
    assert d["pl_dice_A"] == pytest.approx(2 * 1 / 3)  # pseudo {1}, truth {1, 2}
    assert d["pl_dice_B"] == pytest.approx(2 * 1 / 3)  # pseudo {2, 3}, truth {3}
    assert d["pl_confident"] == pytest.approx(0.75)
    assert d["pl_precision"] == pytest.approx(1.0)  # pixels 0, 1, 3 are right
    assert d["pl_fg_precision"] == pytest.approx(1.0)
    # A's true pixels {1, 2}: 1 confident and right, 2 below the threshold; B's {3}: confident and right
    assert (d["pl_recall_A"], d["pl_against_A"]) == (pytest.approx(0.5), pytest.approx(0.0))
    assert (d["pl_recall_B"], d["pl_against_B"]) == (pytest.approx(1.0), pytest.approx(0.0))
    conf[0, 0, 2] = 0.99  # now pixel 2 (truth A) is confidently B: trained against A
    Method.log_pseudo_quality(fake, pseudo, conf, 0.97)
    assert (fake.diagnostics["pl_recall_A"], fake.diagnostics["pl_against_A"]) == (pytest.approx(0.5),) * 2
    assert "pl_wagainst_A" not in fake.diagnostics  # no weak threshold given
    conf[0, 0, 2] = 0.8  # pixel 2 (truth A, labelled B): below 0.97, above a weak threshold of 0.7
    Method.log_pseudo_quality(fake, pseudo, conf, 0.97, 0.7)
    d = fake.diagnostics
    assert (d["pl_recall_A"], d["pl_against_A"]) == (pytest.approx(0.5), pytest.approx(0.0))
    assert (d["pl_wrecall_A"], d["pl_wagainst_A"]) == (pytest.approx(0.5), pytest.approx(0.5))
    assert (d["pl_wrecall_B"], d["pl_wagainst_B"]) == (pytest.approx(1.0), pytest.approx(0.0))


@pytest.mark.parametrize("eval_model", ["teacher", "auto", "student"])
def test_eval_model_decides_what_is_validated_kept_and_exported(tiny_cache, tmp_path, eval_model):
    out = tmp_path / eval_model
    res = train(_cfg(tiny_cache, out, "mean_teacher", iterations=4, eval_model=eval_model), progress=False)
    vals = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if '"val"' in l]
    best = load_checkpoint(out / "best.pt")
    if eval_model == "auto":
        assert all({"student_dice", "teacher_dice"} <= v.keys() for v in vals)
        for v in vals:
            assert v["mean_dice"] == max(v["student_dice"], v["teacher_dice"])
    else:
        assert all(v["model"] == eval_model for v in vals)
    assert best["best_model"] == res.best_model
    exported = torch.load(out / "model.pt", weights_only=False)["unet"]
    expected = unet_state(best, res.best_model)
    assert exported.keys() == expected.keys()
    assert all(torch.equal(exported[k], expected[k]) for k in expected)
    if res.best_model == "teacher":
        other = unet_state(best, "student")
        assert any(not torch.equal(exported[k], other[k]) for k in other if other[k].is_floating_point())


def test_mlp_heads_use_layernorm_and_old_checkpoints_keep_batchnorm():
    meta = {"num_classes": 3, "channels": [4, 8, 8, 8, 8], "dropout": [0.0] * 5, "embed_dim": 8}
    old = build_model(meta, ("global",))  # a checkpoint of mona <= 0.3 has no head_norm in its meta
    assert isinstance(old.heads["global"].mlp[1], torch.nn.BatchNorm1d)
    new = build_model({**meta, "head_norm": "layer"}, ("global", "local"))
    assert isinstance(new.heads["global"].mlp[1], torch.nn.LayerNorm)
    assert isinstance(new.heads["predictor"].mlp[1], torch.nn.LayerNorm)
    assert isinstance(new.heads["local"].mlp[1], torch.nn.LayerNorm)


def test_a_labeled_list_override_replaces_the_packaged_labeled_patients(tiny_cache, tmp_path):
    lst = tmp_path / "labeled.list"
    lst.write_text("patient001\n")
    cfg = load_config("python/mona/configs/demo.yaml", [f"data.cache={tiny_cache}", f"data.labeled_list={lst}"])
    assert (cfg.data.labeled_patients, cfg.data.labeled_list) == (None, str(lst))
    with pytest.raises(ValueError, match="set at most one of"):
        load_config(
            "python/mona/configs/demo.yaml",
            [f"data.cache={tiny_cache}", f"data.labeled_list={lst}", "data.labeled_ratio=0.5"],
        )
