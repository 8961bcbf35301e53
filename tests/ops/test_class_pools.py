"""torch.ops.mona.class_pools against mona_ext.reference.class_pools (valid pixels grouped by class, hard | easy)."""

from __future__ import annotations

import pytest
import torch
from op_testing import DEVICES, EMU, KERNEL_DEVICES, device_of, on, scene

import mona_ext
from mona_ext import reference


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("with_prob", [False, True])
@pytest.mark.parametrize("with_valid", [False, True])
def test_class_pools_matches_reference(device, with_prob, with_valid):
    _, lab, prob = scene(B=3, H=9, W=10, C=4, device=device)
    valid = (torch.rand(lab.shape, generator=torch.Generator().manual_seed(1)) > 0.3).to(device) if with_valid else None
    p = prob if with_prob else None
    ours = mona_ext.class_pools(lab, 4, valid=valid, prob=p, strong_threshold=0.5)
    ref = reference.class_pools(lab, 4, valid=valid, prob=p, strong_threshold=0.5)
    for a, b, name in zip(ours, ref, ["offsets", "counts", "hard_counts", "permutation"]):
        assert torch.equal(a.cpu(), b.cpu()), name


def test_class_pools_properties():
    _, lab, prob = scene(B=2, H=16, W=16, C=3)
    offsets, counts, hard, perm = mona_ext.class_pools(lab, 3, prob=prob, strong_threshold=0.6)
    flat = lab.reshape(-1)
    pc = prob.permute(0, 2, 3, 1).reshape(-1, 3)
    for c in range(3):
        seg = perm[offsets[c] : offsets[c] + counts[c]]
        assert torch.all(flat[seg] == c) and counts[c] == (flat == c).sum()
        assert torch.all(pc[seg[: hard[c]], c] < 0.6) and torch.all(pc[seg[hard[c] :], c] >= 0.6)
        assert torch.all(seg[: hard[c]].diff() > 0) and torch.all(seg[hard[c] :].diff() > 0)  # pixel order
    assert torch.all(perm[counts.sum() :] == -1)


@pytest.mark.parametrize("device", DEVICES)
def test_class_pools_zero_size_and_all_ignore(device):
    lab = torch.empty(0, 4, 4, dtype=torch.long, device=device)
    offsets, counts, hard, perm = mona_ext.class_pools(lab, 3)
    assert perm.shape == (0,) and torch.all(counts == 0)
    lab = torch.full((2, 3, 3), -1, device=device)
    offsets, counts, hard, perm = mona_ext.class_pools(lab, 3)
    assert torch.all(counts == 0) and torch.all(perm == -1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_classes=0), "num_classes must be positive"),
        (dict(labels=torch.zeros(2, 3)), "labels must be int64 or int32"),
        (dict(labels=torch.zeros(2, 3, dtype=torch.long)), r"labels must be \[B, H, W\] or \[N\]"),
        (dict(prob=torch.rand(2, 4, 5, 5)), r"prob must be \[B, C, H, W\].*num_classes = 3"),
        (dict(valid=torch.ones(2, 5)), "valid must have the labels' shape"),
        (dict(labels=torch.full((2, 5, 5), 7)), "labels contain 7"),
    ],
)
def test_class_pools_errors(kwargs, message):
    args = dict(labels=torch.zeros(2, 5, 5, dtype=torch.long), num_classes=3, valid=None, prob=None)
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=message):
        mona_ext.class_pools(args["labels"], args["num_classes"], valid=args["valid"], prob=args["prob"])


@pytest.mark.parametrize("kernel_device", KERNEL_DEVICES)
@pytest.mark.parametrize("prob_dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_device_class_pools_int32_labels_many_pixels_match_cpu(kernel_device, prob_dtype):
    """int32 labels, N = 4800 > 4096 pixels (several blocks of the key kernel; a multi-block stable
    sort), a valid mask and prob in every floating dtype: the same pools as the CPU kernel."""
    dev = device_of(kernel_device)
    _, lab, prob = scene(B=2, H=48, W=50, C=5, seed=3)
    lab = lab.to(torch.int32)
    prob = prob.to(prob_dtype)
    valid = torch.rand(lab.shape, generator=torch.Generator().manual_seed(4)) > 0.2
    cpu = mona_ext.class_pools(lab, 5, valid=valid, prob=prob, strong_threshold=0.4)
    with on(kernel_device):
        ours = mona_ext.class_pools(lab.to(dev), 5, valid=valid.to(dev), prob=prob.to(dev), strong_threshold=0.4)
        flat = mona_ext.class_pools(lab.reshape(-1).to(dev), 5, valid=valid.reshape(-1).to(dev))
    for a, b, name in zip(ours, cpu, ["offsets", "counts", "hard_counts", "permutation"]):
        assert torch.equal(a.cpu(), b), name
    for a, b, name in zip(
        flat,
        mona_ext.class_pools(lab.reshape(-1), 5, valid=valid.reshape(-1)),
        ["offsets", "counts", "hard_counts", "permutation"],
    ):
        assert torch.equal(a.cpu(), b), name
    assert 0 < int(cpu[2].sum()) < int(cpu[1].sum())  # hard and easy pixels


@pytest.mark.emu
def test_emu_mismatched_device_message():
    _, lab, prob = scene()
    with on(EMU):
        with pytest.raises(ValueError, match="class_pools: prob is on meta but labels are on cpu"):
            mona_ext.class_pools(lab, 3, prob=prob.to("meta"))
