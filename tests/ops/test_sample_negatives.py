"""torch.ops.mona.sample_negatives: the distribution of its queries and negatives, its determinism and
its errors (a random op: no reference value; mona_ext.reference.contrast_loss_vectorised samples the
same distribution)."""

from __future__ import annotations

import math

import pytest
import torch
from op_testing import DEVICES, EMU, KERNEL_DEVICES, device_of, on, pools_and_protos, sampled, scene

import mona_ext


def expected_class_probs(protos, present, c, temperature):
    cos = torch.nn.functional.cosine_similarity(protos[c][None], protos, dim=1) / temperature
    allowed = present.clone()
    allowed[c] = False
    cos[~allowed] = -math.inf
    return torch.softmax(cos, 0)


def chi_square_pvalue(observed: torch.Tensor, expected_prob: torch.Tensor) -> float:
    from scipy.stats import chisquare

    keep = expected_prob > 0
    n = observed.sum().item()
    assert torch.all(observed[~keep] == 0), "a class of zero probability was drawn"
    return chisquare(observed[keep].double().numpy(), (expected_prob[keep] * n).double().numpy()).pvalue


@pytest.mark.parametrize("device", DEVICES)
def test_negative_classes_follow_softmax(device):
    lab = torch.arange(5).repeat_interleave(40).reshape(1, 10, 20).to(device)  # 5 classes, 40 px each
    pools, protos = pools_and_protos(lab, 5)
    _, nidx, weight = mona_ext.sample_negatives(
        *pools,
        protos,
        num_queries=64,
        num_negatives=256,
        temperature=0.5,
        generator=torch.Generator(device).manual_seed(0),
    )
    flat = lab.reshape(-1)
    for c in range(5):
        drawn = torch.bincount(flat[nidx[c].reshape(-1)].cpu(), minlength=5)
        expected = expected_class_probs(protos.cpu(), torch.ones(5, dtype=torch.bool), c, 0.5)
        assert drawn[c] == 0
        assert chi_square_pvalue(drawn, expected) > 1e-4
    assert torch.allclose(weight.cpu(), torch.full((5,), 0.2))


def test_negative_pixels_uniform_within_class_and_queries_hard_only():
    lab = torch.zeros(1, 8, 8, dtype=torch.long)
    lab[0, :, 4:] = 1  # two classes of 32 pixels
    prob = torch.zeros(1, 2, 8, 8, dtype=torch.float64)
    prob[0, 0] = torch.linspace(0, 1, 64).reshape(8, 8)  # class 0: some hard, some easy
    prob[0, 1] = 0.5
    pools, protos = pools_and_protos(lab, 2, prob=prob, threshold=0.5)
    qidx, nidx, _ = mona_ext.sample_negatives(
        *pools, protos, num_queries=4096, num_negatives=64, generator=torch.Generator().manual_seed(3)
    )
    # negatives of class 0's queries are class-1 pixels, uniform over the 32 of them
    counts = torch.bincount(nidx[0].reshape(-1), minlength=64)[lab.reshape(-1) == 1]
    assert chi_square_pvalue(counts, torch.full((32,), 1 / 32, dtype=torch.float64)) > 1e-4
    # queries of class 0 come only from its hard pixels (prob < 0.5), uniformly
    hard_pixels = ((lab.reshape(-1) == 0) & (prob[0, 0].reshape(-1) < 0.5)).nonzero()[:, 0]
    assert set(qidx[0].tolist()) <= set(hard_pixels.tolist())
    q_counts = torch.bincount(qidx[0], minlength=64)[hard_pixels]
    assert (
        chi_square_pvalue(q_counts, torch.full((len(hard_pixels),), 1 / len(hard_pixels), dtype=torch.float64)) > 1e-4
    )


def test_query_modes():
    lab = torch.zeros(1, 4, 8, dtype=torch.long)
    lab[0, :, 4:] = 1
    prob = torch.full((1, 2, 4, 8), 0.99, dtype=torch.float64)
    prob[0, 0, :2] = 0.1  # class 0: 8 hard, 8 easy; class 1: all easy
    pools, protos = pools_and_protos(lab, 2, prob=prob, threshold=0.97)
    g = torch.Generator().manual_seed(0)
    hard_px = set(((lab[0] == 0) & (prob[0, 0] < 0.97)).reshape(-1).nonzero()[:, 0].tolist())
    q, _, w = mona_ext.sample_negatives(*pools, protos, num_queries=64, num_negatives=4, query_mode="hard", generator=g)
    assert set(q[0].tolist()) <= hard_px and torch.all(q[1] == -1)
    assert w.tolist() == [0.5, 0.0]  # class 1 has no hard pixel: contributes 0 but counts
    q, _, w = mona_ext.sample_negatives(
        *pools, protos, num_queries=64, num_negatives=4, query_mode="balanced", generator=g
    )
    assert set(q[0, :32].tolist()) <= hard_px and not (set(q[0, 32:].tolist()) & hard_px)
    assert w.tolist() == [0.5, 0.5]
    q, _, _ = mona_ext.sample_negatives(*pools, protos, num_queries=64, num_negatives=4, query_mode="all", generator=g)
    assert set(q[0].tolist()) <= set((lab.reshape(-1) == 0).nonzero()[:, 0].tolist())


@pytest.mark.parametrize("device", DEVICES)
def test_sampler_deterministic_and_generator_driven(device):
    _, lab, prob = scene(B=2, H=8, W=8, C=3, device=device)
    pools, protos = pools_and_protos(lab, 3)
    run = lambda seed: mona_ext.sample_negatives(
        *pools, protos, 16, 32, generator=torch.Generator(device).manual_seed(seed)
    )
    a, b, c = run(5), run(5), run(6)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[1], c[1])


def test_bank_negatives_indices_and_absent_class():
    """A class absent from the batch but present in the bank supplies negatives."""
    lab = torch.zeros(1, 4, 4, dtype=torch.long)
    lab[0, 2:] = 1  # classes 0, 1 in the batch; class 2 only in the bank
    pools, protos = pools_and_protos(lab, 3)
    N, K = 16, 5
    fill = torch.tensor([0, 3, 5])
    for negatives in ("bank", "both"):
        q, nidx, w = mona_ext.sample_negatives(
            *pools,
            protos,
            32,
            64,
            negatives=negatives,
            bank_fill=fill,
            bank_size=K,
            generator=torch.Generator().manual_seed(1),
        )
        assert w.tolist() == [0.5, 0.5, 0.0]
        for c in range(2):
            idx = nidx[c].reshape(-1)
            bank_rows = idx[idx >= N] - N
            assert len(bank_rows) > 0
            v, slot = bank_rows // K, bank_rows % K
            assert torch.all(slot < fill[v]) and torch.all(v != c)
            assert (v == 2).any()
            if negatives == "bank":
                assert torch.all(idx >= N)
            else:
                assert (idx < N).any() and torch.all(lab.reshape(-1)[idx[idx < N]] != c)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_queries=0), "num_queries must be positive"),
        (dict(num_negatives=0), "num_negatives must be positive"),
        (dict(temperature=0.0), "temperature must be positive"),
        (dict(temperature=float("nan")), "temperature must be positive and finite"),
        (dict(negatives="memory"), "negatives must be 'batch', 'bank' or 'both'"),
        (dict(query_mode="easy"), "query_mode must be 'hard', 'all' or 'balanced'"),
        (dict(negatives="bank"), "needs a memory bank"),
    ],
)
def test_sampler_errors(kwargs, message):
    lab = torch.randint(0, 3, (1, 4, 4))
    pools, protos = pools_and_protos(lab, 3)
    args = dict(num_queries=4, num_negatives=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        mona_ext.sample_negatives(*pools, protos, **args)


@pytest.mark.parametrize("kernel_device", KERNEL_DEVICES)
@pytest.mark.parametrize("negatives", ["batch", "bank", "both"])
@pytest.mark.parametrize("query_mode", ["hard", "all", "balanced"])
def test_device_sampler_matches_cpu(kernel_device, negatives, query_mode):
    """The device sampler maps the same uniforms (drawn from the generator on the host side) to the
    same indices as the CPU kernel, for every negative source and query mode."""
    dev = device_of(kernel_device)
    _, lab, prob = scene(B=2, H=8, W=9, C=4, seed=5)
    pools = mona_ext.class_pools(lab, 4, prob=prob, strong_threshold=0.6)
    protos = torch.randn(4, 8, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    fill = torch.tensor([3, 0, 5, 2]) if negatives != "batch" else None
    kw = dict(
        temperature=0.3,
        negatives=negatives,
        query_mode=query_mode,
        bank_fill=fill,
        bank_size=5 if fill is not None else 0,
    )
    cpu = mona_ext.sample_negatives(*pools, protos, 16, 24, generator=torch.Generator().manual_seed(7), **kw)
    kw["bank_fill"] = fill.to(dev) if fill is not None else None
    with on(kernel_device):
        ours = mona_ext.sample_negatives(
            *(t.to(dev) for t in pools), protos.to(dev), 16, 24, generator=torch.Generator(dev).manual_seed(7), **kw
        )
    if dev == "cpu":  # the emulation draws the same uniforms from the same CPU generator: same indices
        for a, b, name in zip(ours, cpu, ["query_index", "negative_index", "class_weight"]):
            assert torch.equal(a, b), name
    # on any device: the sample is valid (queries of their class, negatives of other classes or the bank)
    q, n, w = (t.cpu() for t in ours)
    torch.testing.assert_close(w, cpu[2])
    flat = lab.reshape(-1)
    N = flat.numel()
    for c in range(4):
        if w[c] > 0:
            assert torch.all(flat[q[c]] == c)
            idx = n[c].reshape(-1)
            assert torch.all(flat[idx[idx < N]] != c)
            bank_rows = idx[idx >= N] - N
            assert torch.all(bank_rows // 5 != c) and torch.all(
                bank_rows % 5 < torch.tensor([3, 0, 5, 2])[bank_rows // 5]
            )
            if negatives == "bank":
                assert torch.all(idx >= N)
            if negatives == "batch":
                assert torch.all(idx < N)


@pytest.mark.emu
def test_emu_mismatched_device_message():
    _, _, protos, _, _, _, _ = sampled(bank=True)
    _, lab, _ = scene()
    with on(EMU):
        pools = mona_ext.class_pools(lab, 3)
        with pytest.raises(ValueError, match="sample_negatives: prototypes is on meta but offsets is on cpu"):
            mona_ext.sample_negatives(*pools, protos.to("meta"), 4, 4)
