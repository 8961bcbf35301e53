"""mona_ext.reference.contrast_loss_vectorised (the ``impl: reference`` contrast loss) against the op.

The reference draws from its own random stream, so it can equal ``mona_ext.contrast_loss`` value for
value only where every draw is forced (one candidate query pixel, one candidate negative class, one
candidate key); elsewhere the two must agree in distribution (means over generator seeds).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from op_testing import DEVICES

import mona_ext
from mona_ext import reference

torch.set_num_threads(1)

ref_loss = reference.contrast_loss_vectorised


def gen(seed, device="cpu"):
    return torch.Generator(device).manual_seed(seed)


def both_losses(features, labels, C, device="cpu", seed=0, **kw):
    """(op, reference) losses for the same arguments (each with its own generator of one seed)."""
    a = mona_ext.contrast_loss(features, labels, C, generator=gen(seed, device), **kw)
    b = ref_loss(features, labels, C, generator=gen(seed + 7919, device), **kw)
    return a, b


def assert_same(a, b, tol=1e-9):
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    assert abs(a.item() - b.item()) <= tol, (a.item(), b.item())


def two_class_map(device, B=2, D=6, H=4, W=4, seed=0):
    """float64 features, labels 0 | 1 (left | right half), prob: exactly one hard pixel per class
    (pixel (0, 0, 0) for class 0, pixel (1, 3, 3) for class 1) at strong_threshold 0.97."""
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(B, D, H, W, generator=g, dtype=torch.float64)
    lab = torch.zeros(B, H, W, dtype=torch.long)
    lab[:, :, W // 2 :] = 1
    prob = torch.full((B, 2, H, W), 0.99, dtype=torch.float64)
    prob[0, 0, 0, 0] = 0.5
    prob[1, 1, H - 1, W - 1] = 0.5
    return f.to(device), lab.to(device), prob.to(device)


# ----------------------------------------------------------------------------------------------
# 1. deterministic agreement where every draw is forced


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("teacher", [False, True], ids=["self-keys", "teacher-keys"])
def test_batch_one_pixel_per_class_equals_op_and_closed_form(device, teacher):
    # class 0 and class 1 each have one valid pixel: queries, positive and negatives are all forced.
    g = torch.Generator().manual_seed(1)
    f = torch.randn(1, 5, 3, 3, generator=g, dtype=torch.float64).to(device)
    keys = torch.randn(1, 5, 3, 3, generator=g, dtype=torch.float64).to(device) if teacher else None
    lab = torch.tensor([[[0, 255, 1], [0, 1, 255], [1, 0, 0]]], device=device)  # 255 = ignore_index
    valid = torch.tensor([[[1, 1, 0], [0, 1, 1], [0, 0, 0]]], device=device)  # keeps pixels 0 and 4 only
    kw = dict(valid=valid, num_queries=3, num_negatives=5, ignore_index=255, temperature=0.3, key_features=keys)
    a, b = both_losses(f, lab, 2, device, **kw)
    assert_same(a, b)
    # independent closed form: loss_c = logsumexp([cos(x_c, k_c), M x cos(x_c, k_o)] / t) - cos(x_c, k_c) / t
    x = f.reshape(5, 9).T.cpu()
    k = (f if keys is None else keys).reshape(5, 9).T.cpu()
    cos = lambda u, w: float(torch.dot(u, w) / (u.norm() * w.norm()))
    total = 0.0
    for c, o in ((0, 4), (4, 0)):
        pos, neg = cos(x[c], k[c]) / 0.3, cos(x[c], k[o]) / 0.3
        total += math.log(math.exp(pos) + 5 * math.exp(neg)) - pos
    assert abs(b.item() - total / 2) < 1e-12, (b.item(), total / 2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("teacher", [False, True], ids=["self-keys", "teacher-keys"])
def test_bank_negatives_forced_equals_op_with_gradient(device, teacher):
    # many pixels per class (prototypes are real means, masked by `valid`), one hard pixel each,
    # one filled bank slot per class: the negative of class c is bank[1 - c, 0].
    f, lab, prob = two_class_map(device)
    keys = (f + 0.3 * torch.randn_like(f)).requires_grad_(True) if teacher else None
    valid = torch.ones_like(lab)
    valid[0, 1:3, :] = 0  # off the prototypes (none of them hard)
    bank = torch.randn(2, 4, 6, dtype=torch.float64, generator=gen(5)).to(device)
    bank[:, 1:] = 1e3  # unfilled slots: never read
    fill = torch.tensor([1, 1], device=device)
    x1 = f.clone().requires_grad_(True)
    x2 = f.clone().requires_grad_(True)
    kw = dict(
        valid=valid,
        prob=prob,
        num_queries=4,
        num_negatives=6,
        key_features=keys,
        bank=bank,
        bank_fill=fill,
        negatives="bank",
    )
    a = mona_ext.contrast_loss(x1, lab, 2, generator=gen(0, device), **kw)
    b = ref_loss(x2, lab, 2, generator=gen(1, device), **kw)
    assert_same(a, b)
    a.backward()
    b.backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-9, atol=1e-12)
    assert (x2.grad.abs().sum(1) > 0).sum() == 2  # the two hard pixels only
    if teacher:
        assert keys.grad is None  # keys carry no gradient in either implementation


@pytest.mark.parametrize("device", DEVICES)
def test_both_class_absent_from_batch_supplies_the_only_negatives(device):
    # only class 0 in the batch; class 1 lives in the bank only (one slot), class 2 is nowhere:
    # with "both" every negative is bank[1, 0] and the single present class gives weight 1.
    f, lab, prob2 = two_class_map(device)
    lab = torch.zeros_like(lab)
    lab[1, 0, 0] = -1
    prob = torch.cat([prob2, torch.zeros_like(prob2[:, :1])], 1)
    bank = torch.randn(3, 3, 6, dtype=torch.float64, generator=gen(6)).to(device)
    fill = torch.tensor([2, 1, 0], device=device)
    kw = dict(prob=prob, num_queries=2, num_negatives=7, bank=bank, bank_fill=fill)
    a, b = both_losses(f, lab, 3, device, negatives="both", **kw)
    assert_same(a, b)
    assert b.item() > 0
    # batch negatives: a single class -> no negatives -> 0, in both implementations
    a0, b0 = both_losses(f, lab, 3, device, negatives="batch", **kw)
    assert a0.item() == 0.0 and b0.item() == 0.0


@pytest.mark.parametrize("device", DEVICES)
def test_both_batch_pixel_and_present_class_without_queries(device):
    # class 1 = one valid, easy pixel with an empty bank slot list: class 0's negatives are forced to
    # it (batch part of "both"); class 1 has no hard query but is present, so the weight is 1/2.
    f, lab, prob = two_class_map(device)
    valid = torch.zeros_like(lab)
    valid[lab == 0] = 1
    valid[0, 2, 3] = 1  # the single class-1 pixel (easy)
    bank = torch.randn(2, 3, 6, dtype=torch.float64, generator=gen(7)).to(device)
    fill = torch.tensor([3, 0], device=device)
    a, b = both_losses(
        f,
        lab,
        2,
        device,
        valid=valid,
        prob=prob,
        num_queries=3,
        num_negatives=4,
        bank=bank,
        bank_fill=fill,
        negatives="both",
    )
    assert_same(a, b)
    # the same value as "batch" (class 1 has no bank slots), i.e. half of class 0's loss
    a_batch, b_batch = both_losses(f, lab, 2, device, valid=valid, prob=prob, num_queries=3, num_negatives=4)
    assert_same(a_batch, b)
    assert_same(b_batch, b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode,pixels", [("balanced", "hard+easy"), ("all", "easy"), ("hard", "hard+easy")])
def test_query_modes_forced(device, mode, pixels):
    # class 0: its hard pixel (0,0,0) and, for "hard+easy", one easy pixel (0,0,1); class 1: one easy
    # pixel. balanced with Q = 3: queries 0, 1 hard, query 2 easy; class 1 falls back to its easy side.
    f, lab, prob = two_class_map(device)
    valid = torch.zeros_like(lab)
    valid[0, 0, 1] = 1
    valid[0, 1, 3] = 1  # class 1, easy
    if pixels == "hard+easy":
        valid[0, 0, 0] = 1
    bank = torch.randn(2, 2, 6, dtype=torch.float64, generator=gen(8)).to(device)
    fill = torch.tensor([1, 1], device=device)
    kw = dict(
        valid=valid,
        prob=prob,
        num_queries=3,
        num_negatives=5,
        bank=bank,
        bank_fill=fill,
        negatives="bank",
        query_mode=mode,
    )
    a, b = both_losses(f, lab, 2, device, **kw)
    assert_same(a, b)
    assert b.item() > 0
    if mode == "all":  # the same pixels give no hard query at all
        a0, b0 = both_losses(f, lab, 2, device, **{**kw, "query_mode": "hard"})
        assert a0.item() == 0.0 and b0.item() == 0.0


@pytest.mark.parametrize("device", DEVICES)
def test_three_present_classes_one_without_negative_classes(device):
    # three classes present (one hard pixel each), the bank holds only class 2: classes 0 and 1 draw
    # bank[2, 0] every time, class 2 has no other class with keys (weight 0) but counts: loss / 3.
    # Tolerance 1e-6, not 1e-12: the op's class weights are float32 even for float64 features
    # (1/3 rounded to float32, ~3e-8 relative); the reference divides exactly.
    g = torch.Generator().manual_seed(2)
    f = torch.randn(1, 4, 1, 6, generator=g, dtype=torch.float64).to(device)
    lab = torch.tensor([[[0, 0, 1, 1, 2, 2]]], device=device)
    prob = torch.full((1, 3, 1, 6), 0.99, dtype=torch.float64)
    prob[0, 0, 0, 0] = prob[0, 1, 0, 2] = prob[0, 2, 0, 4] = 0.5
    bank = torch.randn(3, 2, 4, generator=g, dtype=torch.float64).to(device)
    fill = torch.tensor([0, 0, 1], device=device)
    a, b = both_losses(
        f,
        lab,
        3,
        device,
        prob=prob.to(device),
        num_queries=2,
        num_negatives=3,
        bank=bank,
        bank_fill=fill,
        negatives="bank",
    )
    assert_same(a, b, tol=1e-6)
    assert b.item() > 0


def test_class_memory_bank_object_and_float32():
    f, lab, prob = two_class_map("cpu")
    f = f.float()
    mb = mona_ext.ClassMemoryBank(2, 3, 6)
    mb.storage.copy_(torch.randn(2, 3, 6, generator=gen(9)))
    mb.fill.copy_(torch.tensor([1, 1]))
    a, b = both_losses(f, lab, 2, prob=prob, num_queries=2, num_negatives=3, bank=mb, negatives="bank")
    assert a.dtype == b.dtype == torch.float32
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="bank"):
        ref_loss(f, lab, 2, prob=prob, bank=mb, bank_fill=mb.fill, negatives="bank")


# ----------------------------------------------------------------------------------------------
# 2. agreement in distribution


def three_class_problem(seed=3):
    """B=2, D=8, 8x8, C=3: classes 0, 1 in the batch, class 2 only in the bank; the bank's class-2
    keys lie near class 0 (hard negatives for class 0 when the graph uses the bank prototype of its
    filled slots); a teacher key map."""
    g = torch.Generator().manual_seed(seed)
    B, D, H, W, C = 2, 8, 8, 8, 3
    lab = torch.randint(0, 2, (B, H, W), generator=g)
    lab[torch.rand(B, H, W, generator=g) < 0.1] = -1
    centers = torch.randn(C, D, generator=g, dtype=torch.float64)
    centers[2] = centers[0] + 0.3 * torch.randn(D, generator=g, dtype=torch.float64)
    f = centers[lab.clamp_min(0)].permute(0, 3, 1, 2) + torch.randn(B, D, H, W, generator=g, dtype=torch.float64)
    teacher = f + 0.2 * torch.randn(B, D, H, W, generator=g, dtype=torch.float64)
    prob = torch.softmax(2 * torch.randn(B, C, H, W, generator=g, dtype=torch.float64), 1)
    bank = centers[:, None, :] + 0.7 * torch.randn(C, 6, D, generator=g, dtype=torch.float64)
    fill = torch.tensor([4, 2, 5])
    bank[2, 5] = -10 * centers[0]  # stale, unfilled slots: neither keys nor part of a bank prototype
    bank[1, 2:] = -10 * centers[0]
    return f, lab, dict(prob=prob, strong_threshold=0.8, key_features=teacher, bank=bank, bank_fill=fill)


def seed_losses(fn, f, lab, kw, seeds):
    return np.array([fn(f, lab, 3, generator=gen(s), **kw).item() for s in seeds])


def z_score(a, b):
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    return (a.mean() - b.mean()) / se


@pytest.mark.parametrize("negatives,query_mode", [("both", "hard"), ("bank", "balanced"), ("both", "all")])
def test_mean_over_seeds_agrees_with_op(negatives, query_mode):
    f, lab, kw = three_class_problem()
    kw.update(negatives=negatives, query_mode=query_mode, num_queries=16, num_negatives=32)
    ours = seed_losses(mona_ext.contrast_loss, f, lab, kw, range(240))
    theirs = seed_losses(ref_loss, f, lab, kw, range(1000, 1240))
    assert ours.std() > 0 and theirs.std() > 0  # really random
    assert abs(z_score(ours, theirs)) < 4, (ours.mean(), theirs.mean())


def test_bank_changes_the_mean():
    # fails if the reference ignored the bank: its "both" mean must match the op's "both" and be
    # far from both implementations' "batch" mean.
    f, lab, kw = three_class_problem()
    kw.update(num_queries=16, num_negatives=32)
    op_both = seed_losses(mona_ext.contrast_loss, f, lab, {**kw, "negatives": "both"}, range(240))
    ref_both = seed_losses(ref_loss, f, lab, {**kw, "negatives": "both"}, range(1000, 1240))
    ref_batch = seed_losses(ref_loss, f, lab, {**kw, "negatives": "batch"}, range(2000, 2160))
    op_batch = seed_losses(mona_ext.contrast_loss, f, lab, {**kw, "negatives": "batch"}, range(3000, 3160))
    assert abs(z_score(op_both, ref_both)) < 4
    assert abs(z_score(op_batch, ref_batch)) < 4
    assert z_score(ref_both, ref_batch) > 10, (ref_both.mean(), ref_batch.mean())


# ----------------------------------------------------------------------------------------------
# 3. errors and edge cases


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("negatives", ["batch", "bank"])
def test_fewer_than_two_classes_gives_zero_with_grad_path(device, negatives):
    f, _, prob = two_class_map(device)
    lab = torch.ones(2, 4, 4, dtype=torch.long, device=device)
    bank = torch.randn(2, 3, 6, dtype=torch.float64, device=device)
    fill = torch.tensor([0, 3], device=device)  # the bank only holds the batch's own class
    for fn in (mona_ext.contrast_loss, ref_loss):
        x = f.clone().requires_grad_(True)
        loss = fn(
            x,
            lab,
            2,
            prob=None,
            num_queries=4,
            num_negatives=4,
            bank=bank,
            bank_fill=fill,
            negatives=negatives,
            generator=gen(0, device),
        )
        assert loss.item() == 0.0 and loss.requires_grad and loss.dtype == torch.float64
        loss.backward()
        assert torch.all(x.grad == 0)


def test_all_ignored_and_zero_size_batch():
    f = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    lab = torch.full((2, 3, 3), -1)
    assert ref_loss(f, lab, 3, num_queries=2, num_negatives=2).item() == 0.0
    empty = ref_loss(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), 3, num_queries=2, num_negatives=2)
    assert empty.item() == 0.0


def test_bad_arguments_raise_value_errors_naming_them():
    f, lab, prob = two_class_map("cpu")
    with pytest.raises(ValueError, match="negatives"):
        ref_loss(f, lab, 2, negatives="memory")
    with pytest.raises(ValueError, match="query_mode"):
        ref_loss(f, lab, 2, query_mode="easy")
    with pytest.raises(ValueError, match="bank"):
        ref_loss(f, lab, 2, negatives="both")
    with pytest.raises(ValueError, match="labels"):
        ref_loss(f, torch.full_like(lab, 2), 2)
    with pytest.raises(ValueError, match="labels"):  # -1 is not the ignore index here
        ref_loss(f, torch.full_like(lab, -1), 2, ignore_index=255)
    with pytest.raises(ValueError):  # the op rejects the same labels
        mona_ext.contrast_loss(f, torch.full_like(lab, 2), 2)


def test_existing_positional_call_is_unchanged():
    # the benchmark / test_contrast_loss call: batch negatives, hard queries, positional generator
    f, lab, prob = two_class_map("cpu")
    a = ref_loss(f, lab, 2, None, prob, 0.97, 0.5, 4, 8, gen(3))
    b = ref_loss(
        f,
        lab,
        2,
        prob=prob,
        num_queries=4,
        num_negatives=8,
        generator=gen(3),
        negatives="batch",
        query_mode="hard",
        bank=torch.zeros(2, 1, 6, dtype=torch.float64),
    )  # a bank is unused for "batch"
    assert torch.equal(a, b) and a.dtype == torch.float64
