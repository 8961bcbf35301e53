"""torch.ops.mona.contrast_loss (the composite ACF loss) and the ReCo drop-in mona_ext.reco_loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from op_testing import DEVICES, KERNEL_DEVICES, device_of, on

import mona_ext
from mona_ext import reference


def batch(B=2, D=16, H=12, W=12, C=4, seed=0, dtype=torch.float32, device="cpu", ignore_frac=0.1, sharp=2.0):
    g = torch.Generator().manual_seed(seed)
    lab = torch.randint(0, C, (B, H, W), generator=g)
    # features correlated with the labels, so that the loss is far from its chance value
    centers = torch.randn(C, D, generator=g)
    f = centers[lab].permute(0, 3, 1, 2) + torch.randn(B, D, H, W, generator=g)
    lab[torch.rand(B, H, W, generator=g) < ignore_frac] = -1
    prob = torch.softmax(torch.randn(B, C, H, W, generator=g) * sharp, 1)
    return f.to(device=device, dtype=dtype), lab.to(device), prob.to(device)


def gen(seed, device="cpu"):
    return torch.Generator(device).manual_seed(seed)


@pytest.mark.parametrize("device", DEVICES)
def test_composite_equals_parts(device):
    f, lab, prob = batch(device=device, dtype=torch.float64)
    loss = mona_ext.contrast_loss(
        f, lab, 4, prob=prob, strong_threshold=0.9, num_queries=32, num_negatives=64, generator=gen(3, device)
    )
    pools = mona_ext.class_pools(lab, 4, prob=prob, strong_threshold=0.9)
    protos, _ = mona_ext.class_mean(f, lab, 4)
    q, n, w = mona_ext.sample_negatives(*pools, protos, 32, 64, generator=gen(3, device))
    ref = reference.contrast_infonce(f, f, protos, q, n, w, 0.5)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic_for_a_generator_state(device):
    f, lab, prob = batch(device=device)
    run = lambda s: mona_ext.contrast_loss(
        f, lab, 4, prob=prob, num_queries=16, num_negatives=32, generator=gen(s, device)
    )
    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_mean_over_seeds_agrees_with_published_reco():
    """Same algorithm in distribution: means over seeds within 4 standard errors."""
    f, lab, prob = batch(B=2, D=8, H=10, W=10, C=3, seed=4, ignore_frac=0.0)
    onehot = F.one_hot(lab, 3).permute(0, 3, 1, 2).float()
    mask = torch.ones(2, 1, 10, 10)
    ours, theirs = [], []
    for seed in range(40):
        ours.append(
            mona_ext.reco_loss(
                f, onehot, mask, prob, strong_threshold=0.8, num_queries=32, num_negatives=32, generator=gen(seed)
            ).item()
        )
        torch.manual_seed(seed)
        np.random.seed(seed)
        theirs.append(
            reference.reco_loss_published(
                f, onehot, mask, prob, strong_threshold=0.8, num_queries=32, num_negatives=32
            ).item()
        )
    ours, theirs = np.array(ours), np.array(theirs)
    stderr = np.sqrt(ours.var(ddof=1) / len(ours) + theirs.var(ddof=1) / len(theirs))
    assert abs(ours.mean() - theirs.mean()) < 4 * stderr + 1e-6, (ours.mean(), theirs.mean(), stderr)
    assert ours.std() > 0  # the loss really is random


def test_mean_agrees_with_vectorised_pytorch():
    f, lab, prob = batch(B=2, D=8, H=10, W=10, C=4, seed=7)
    ours = [
        mona_ext.contrast_loss(f, lab, 4, prob=prob, num_queries=32, num_negatives=32, generator=gen(s)).item()
        for s in range(30)
    ]
    theirs = [
        reference.contrast_loss_vectorised(
            f, lab, 4, prob=prob, num_queries=32, num_negatives=32, generator=gen(s)
        ).item()
        for s in range(30)
    ]
    stderr = np.sqrt(np.var(ours, ddof=1) / 30 + np.var(theirs, ddof=1) / 30)
    assert abs(np.mean(ours) - np.mean(theirs)) < 4 * stderr + 1e-6


def test_reco_loss_is_contrast_loss_on_converted_labels():
    f, lab, prob = batch(seed=2)
    onehot = F.one_hot(lab.clamp_min(0), 4).permute(0, 3, 1, 2).float() * (lab >= 0)[:, None]
    mask = (torch.rand(2, 12, 12, generator=gen(0)) > 0.2).float()
    a = mona_ext.reco_loss(f, onehot, mask[:, None], prob, 0.97, 0.5, 16, 32, generator=gen(9))
    b = mona_ext.contrast_loss(
        f, lab, 4, valid=mask, prob=prob, strong_threshold=0.97, num_queries=16, num_negatives=32, generator=gen(9)
    )
    assert torch.equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_gradient_only_to_query_pixels(device):
    f, lab, prob = batch(device=device)
    x = f.clone().requires_grad_(True)
    teacher = (f + 0.1).requires_grad_(True)
    loss = mona_ext.contrast_loss(
        x, lab, 4, prob=prob, num_queries=8, num_negatives=16, key_features=teacher, generator=gen(0, device)
    )
    loss.backward()
    assert teacher.grad is None  # keys carry no gradient
    touched = x.grad.abs().sum(1) > 0
    assert 0 < touched.sum() <= 4 * 8  # at most C * Q query pixels
    assert torch.all(lab[touched] >= 0)


@pytest.mark.parametrize("device", DEVICES)
def test_single_class_gives_zero_with_grad_path(device):
    f, _, prob = batch(device=device)
    lab = torch.ones(2, 12, 12, dtype=torch.long, device=device)
    x = f.clone().requires_grad_(True)
    loss = mona_ext.contrast_loss(x, lab, 4, prob=prob, num_queries=8, num_negatives=8)
    assert loss.item() == 0.0 and loss.requires_grad and loss.device == x.device
    loss.backward()
    assert torch.all(x.grad == 0)


def test_class_without_hard_pixels_counts_in_denominator():
    f, lab, _ = batch(C=3, ignore_frac=0.0, seed=5)
    prob = torch.full((2, 3, 12, 12), 0.1)
    prob[:, 2] = 0.99  # class 2 pixels are all easy
    prob = torch.where(F.one_hot(lab, 3).permute(0, 3, 1, 2).bool(), prob, torch.full_like(prob, 0.0))
    with_easy = mona_ext.contrast_loss(f, lab, 3, prob=prob, num_queries=16, num_negatives=16, generator=gen(0))
    pools = mona_ext.class_pools(lab, 3, prob=prob, strong_threshold=0.97)
    protos, _ = mona_ext.class_mean(f, lab, 3)
    _, _, w = mona_ext.sample_negatives(*pools, protos, 16, 16, generator=gen(0))
    assert w.tolist() == pytest.approx([1 / 3, 1 / 3, 0.0])
    assert with_easy.item() > 0


def test_bank_supplies_negatives_for_a_class_absent_from_the_batch():
    f, lab, prob = batch(C=3, seed=1)
    lab = torch.where(lab == 2, torch.zeros_like(lab), lab)  # class 2 absent from the batch
    bank = torch.randn(3, 8, 16)
    fill = torch.tensor([8, 0, 8])  # class 1 present in the batch but empty in the bank
    kw = dict(prob=prob, num_queries=16, num_negatives=32)
    batch_only = mona_ext.contrast_loss(f, lab, 3, generator=gen(0), **kw)
    both = mona_ext.contrast_loss(f, lab, 3, bank=bank, bank_fill=fill, negatives="both", generator=gen(0), **kw)
    bank_only = mona_ext.contrast_loss(f, lab, 3, bank=bank, bank_fill=fill, negatives="bank", generator=gen(0), **kw)
    assert torch.isfinite(both) and torch.isfinite(bank_only) and bank_only > 0
    assert not torch.equal(batch_only, both)
    # with one class in the batch, the batch has no negatives but the bank does
    one = torch.zeros_like(lab)
    assert mona_ext.contrast_loss(f, one, 3, generator=gen(0), **kw).item() == 0.0
    assert mona_ext.contrast_loss(f, one, 3, bank=bank, bank_fill=fill, negatives="bank", generator=gen(0), **kw) > 0


def test_class_memory_bank_object_as_negative_source():
    f, lab, prob = batch(C=3, seed=2)
    bank = mona_ext.ClassMemoryBank(3, 16, 16)
    keys = f.permute(0, 2, 3, 1).reshape(-1, 16)
    bank.push(keys, lab.reshape(-1), generator=gen(0))
    assert torch.all(bank.fill == 16)
    a = mona_ext.contrast_loss(
        f, lab, 3, prob=prob, num_queries=8, num_negatives=16, bank=bank, negatives="bank", generator=gen(1)
    )
    b = mona_ext.contrast_loss(
        f,
        lab,
        3,
        prob=prob,
        num_queries=8,
        num_negatives=16,
        bank=bank.storage,
        bank_fill=bank.fill,
        negatives="bank",
        generator=gen(1),
    )
    assert torch.equal(a, b) and a > 0
    with pytest.raises(ValueError, match="either a ClassMemoryBank"):
        mona_ext.contrast_loss(f, lab, 3, bank=bank, bank_fill=bank.fill, negatives="bank")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_within_twice_torch_error(dtype):
    f, lab, prob = batch(D=32, H=16, W=16, seed=3)
    pools = mona_ext.class_pools(lab, 4, prob=prob, strong_threshold=0.97)
    protos, _ = mona_ext.class_mean(f, lab, 4)
    q, n, w = mona_ext.sample_negatives(*pools, protos, 32, 64, generator=gen(0))
    exact = reference.contrast_infonce(f.double(), f.double(), protos.double(), q, n, w, 0.5)
    ours = mona_ext.contrast_infonce(f.to(dtype), f.to(dtype), protos.to(dtype), q, n, w, 0.5)
    # plain PyTorch in the same precision: gather, cosine, cross-entropy all in `dtype`
    x = f.to(dtype).permute(0, 2, 3, 1).reshape(-1, 32)
    keys = torch.cat([protos.to(dtype)[:, None, None].expand(4, 32, 1, 32), x[n]], 2)
    logits = F.cosine_similarity(x[q][:, :, None], keys, dim=-1) / 0.5
    row = torch.logsumexp(logits, -1) - logits[..., 0]
    torch_low = (row.mean(1) * w.to(dtype)).sum()
    err_ours = abs(ours.double() - exact).item()
    err_torch = abs(torch_low.double() - exact).item()
    assert err_ours <= 2 * err_torch + 1e-6, (err_ours, err_torch)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(negatives="bank"), "needs bank"),
        (dict(negatives="all"), "negatives must be one of"),
        (dict(temperature=0.0), "temperature must be positive"),
        (dict(num_queries=0), "num_queries must be positive"),
        (dict(num_classes=0), "num_classes must be positive"),
        (dict(query_mode="soft"), "query_mode must be"),
    ],
)
def test_contrast_loss_errors(kwargs, message):
    f, lab, prob = batch()
    args = dict(num_classes=4, prob=prob)
    args.update(kwargs)
    C = args.pop("num_classes")
    with pytest.raises(ValueError, match=message):
        mona_ext.contrast_loss(f, lab, C, **args)


def test_reco_loss_errors():
    f, lab, prob = batch()
    with pytest.raises(ValueError, match="label must be one-hot"):
        mona_ext.reco_loss(f, lab, torch.ones(2, 12, 12), prob)
    onehot = F.one_hot(lab.clamp_min(0), 4).permute(0, 3, 1, 2).float()
    with pytest.raises(ValueError, match="mask must be"):
        mona_ext.reco_loss(f, onehot, torch.ones(2, 3, 12, 12), prob)


@settings(max_examples=30, deadline=None)
@given(
    B=st.integers(0, 2),
    C=st.integers(1, 4),
    D=st.integers(1, 6),
    side=st.integers(1, 6),
    ignore_frac=st.sampled_from([0.0, 0.5, 1.0]),
    threshold=st.sampled_from([0.0, 0.5, 1.0, 1.1]),
    temperature=st.sampled_from([1e-3, 0.5, 1e3]),
    query_mode=st.sampled_from(["hard", "all", "balanced"]),
    seed=st.integers(0, 10_000),
)
def test_property_finite_and_matches_parts(B, C, D, side, ignore_frac, threshold, temperature, query_mode, seed):
    """Edge cases: zero-size batch, one class, all ignored, pools of size 1, D = 1, extreme temperatures."""
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(B, D, side, side, generator=g, dtype=torch.float64, requires_grad=True)
    lab = torch.randint(0, C, (B, side, side), generator=g)
    lab[torch.rand(B, side, side, generator=g) < ignore_frac] = -1
    prob = torch.rand(B, C, side, side, generator=g, dtype=torch.float64)
    loss = mona_ext.contrast_loss(
        f,
        lab,
        C,
        prob=prob,
        strong_threshold=threshold,
        temperature=temperature,
        num_queries=4,
        num_negatives=5,
        query_mode=query_mode,
        generator=gen(seed),
    )
    loss.backward()
    assert torch.isfinite(loss) and torch.all(torch.isfinite(f.grad))
    pools = mona_ext.class_pools(lab, C, prob=prob, strong_threshold=threshold)
    protos, counts = mona_ext.class_mean(f.detach(), lab, C)
    q, n, w = mona_ext.sample_negatives(
        *pools, protos, 4, 5, temperature=temperature, query_mode=query_mode, generator=gen(seed)
    )
    ref = reference.contrast_infonce(f.detach(), f.detach(), protos, q, n, w, temperature)
    torch.testing.assert_close(loss, ref)
    if int((counts > 0).sum()) < 2:
        assert loss.item() == 0.0


@pytest.mark.parametrize("kernel_device", KERNEL_DEVICES)
def test_device_contrast_loss_matches_reference(kernel_device):
    dev = device_of(kernel_device)
    f, lab, prob = batch(D=32, H=32, W=32, device=dev)
    x = f.clone().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    with on(kernel_device):
        loss = mona_ext.contrast_loss(x, lab, 4, prob=prob, num_queries=32, num_negatives=64, generator=gen(0, dev))
        pools = mona_ext.class_pools(lab, 4, prob=prob, strong_threshold=0.97)
        protos, _ = mona_ext.class_mean(f, lab, 4)
        q, n, w = mona_ext.sample_negatives(*pools, protos, 32, 64, generator=gen(0, dev))
    x2 = f.clone().requires_grad_(True)
    ref = reference.contrast_infonce(x2, f, protos, q, n, w, 0.5)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    with on(kernel_device):
        loss.backward()
    ref.backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-6)
