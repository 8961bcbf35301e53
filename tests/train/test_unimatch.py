"""``method: unimatch``: the masked Dice against the soft Dice, the feature-perturbation stream of the
UNet, the loss composition of a step by hand and the pseudo-label log (resume: test_methods.py; DDP:
test_distributed.py)."""

from __future__ import annotations

import csv

import pytest
import torch
from tinyconfig import tiny_run_config

from mona.train import train
from mona.train.losses import soft_dice_loss
from mona.train.methods.unimatch import masked_dice_loss


def test_masked_dice_is_the_soft_dice_on_the_kept_pixels_only():
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(2, 4, 8, 8, generator=g), torch.randint(0, 4, (2, 8, 8), generator=g)
    every = torch.ones(2, 8, 8, dtype=torch.bool)
    assert masked_dice_loss(logits, target, every) == pytest.approx(float(soft_dice_loss(logits, target)), abs=1e-6)
    keep = torch.rand(2, 8, 8, generator=g) > 0.5
    other_logits, other_target = logits.clone(), target.clone()
    other_logits.permute(0, 2, 3, 1)[~keep] = 5.0  # what is masked out does not count
    other_target[~keep] = 3
    assert masked_dice_loss(other_logits, other_target, keep) == pytest.approx(
        float(masked_dice_loss(logits, target, keep))
    )
    # by hand on the kept pixels: per class 1 - (2 sum p g + eps) / (sum p^2 + sum g + eps), mean over classes
    p = torch.softmax(logits, 1).permute(0, 2, 3, 1)[keep]  # [N, C]
    oh = torch.nn.functional.one_hot(target[keep], 4).float()
    by_hand = (1 - (2 * (p * oh).sum(0) + 1e-5) / ((p * p).sum(0) + oh.sum(0) + 1e-5)).mean()
    assert masked_dice_loss(logits, target, keep) == pytest.approx(float(by_hand), abs=1e-6)
    assert masked_dice_loss(logits, target, torch.zeros_like(keep)) == pytest.approx(0.0, abs=1e-6)  # nothing kept


def test_feature_perturbation_stream_is_the_decoder_on_dropped_out_encoder_maps():
    from mona.models import MonaNet

    model = MonaNet(num_classes=4).eval()
    x = torch.randn(2, 1, 32, 32)
    plain = model(x, with_heads=False)
    both = model(x, with_heads=False, feature_perturbation=0.5)
    # in eval mode dropout is the identity: both streams equal the plain forward
    assert torch.allclose(both.logits, plain.logits, atol=1e-6) and torch.allclose(
        both.unet.logits_fp, plain.logits, atol=1e-6
    )
    assert plain.unet.logits_fp is None
    model.train()
    torch.manual_seed(0)
    out = model(x, with_heads=False, feature_perturbation=0.5)
    assert out.logits.shape == out.unet.logits_fp.shape == (2, 4, 32, 32)
    assert not torch.allclose(out.logits, out.unet.logits_fp)  # channels dropped in the perturbed stream
    with pytest.raises(ValueError, match="feature_perturbation"):
        model(x, with_heads=False, feature_perturbation=1.0)


def _cfg(cache, out, **kw):
    # threshold 0.3: a barely trained model's pseudo-labels get through
    return tiny_run_config(cache, out, "unimatch", every=2, **{"unimatch.threshold": 0.3, **kw})


def test_a_unimatch_step_is_half_of_sup_plus_the_weighted_unlabeled_terms(tiny_cache, tmp_path):
    train(_cfg(tiny_cache, tmp_path / "u", iterations=3), progress=False)
    with open(tmp_path / "u" / "train_log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3
    for r in rows:
        sup, s1, s2, fp = (float(r[k]) for k in ("sup", "s1", "s2", "fp"))
        assert float(r["loss"]) == pytest.approx((sup + 0.25 * s1 + 0.25 * s2 + 0.5 * fp) / 2, rel=1e-5)
        assert 0 < s1 < 1 and 0 < fp < 1
        assert 0 <= float(r["pl_confident"]) <= 1  # the pseudo-label log of the model's own labels
        assert float(r["gn_fp"]) > 0 and float(r["gn_s1"]) > 0
    # weights 0: L_sup alone, and the supervised term of the log is unchanged by the others
    train(
        _cfg(
            tiny_cache,
            tmp_path / "z",
            iterations=1,
            **{"unimatch.s1_weight": 0, "unimatch.s2_weight": 0, "unimatch.fp_weight": 0},
        ),
        progress=False,
    )
    with open(tmp_path / "z" / "train_log.csv") as fh:
        row = next(csv.DictReader(fh))
    assert float(row["loss"]) == pytest.approx(float(row["sup"]) / 2, rel=1e-6)
    from mona.errors import UsageError

    with pytest.raises(UsageError, match="unimatch.fp_dropout"):
        _cfg(tiny_cache, tmp_path / "bad", **{"unimatch.fp_dropout": 1})
