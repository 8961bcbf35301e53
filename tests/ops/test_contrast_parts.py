"""The parts of contrast_loss: class_pools, sample_negatives and the fused contrast_infonce."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mona_ext
from mona_ext import reference

from op_testing import DEVICES, EMU, KERNEL_DEVICES, device_of, on


def scene(B=2, D=8, H=6, W=7, C=3, device="cpu", dtype=torch.float64, seed=0, ignore_frac=0.1, channels_last=False):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(B, D, H, W, generator=g, dtype=torch.float64)
    lab = torch.randint(0, C, (B, H, W), generator=g)
    lab[torch.rand(B, H, W, generator=g) < ignore_frac] = -1
    prob = torch.softmax(torch.randn(B, C, H, W, generator=g, dtype=torch.float64) * 3, 1)
    f = f.to(device=device, dtype=dtype)
    if channels_last:
        f = f.contiguous(memory_format=torch.channels_last)
    return f, lab.to(device), prob.to(device)


# ---------------------------------------------------------------------------------------------- class_pools

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
        seg = perm[offsets[c]:offsets[c] + counts[c]]
        assert torch.all(flat[seg] == c) and counts[c] == (flat == c).sum()
        assert torch.all(pc[seg[:hard[c]], c] < 0.6) and torch.all(pc[seg[hard[c]:], c] >= 0.6)
        assert torch.all(seg[:hard[c]].diff() > 0) and torch.all(seg[hard[c]:].diff() > 0)  # pixel order
    assert torch.all(perm[counts.sum():] == -1)


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


@pytest.mark.parametrize("device", DEVICES)
def test_class_pools_opcheck(device):
    _, lab, prob = scene(device=device)
    torch.library.opcheck(torch.ops.mona.class_pools.default, (lab, 3, None, prob, 0.5, -1))


# ---------------------------------------------------------------------------------------------- sample_negatives

def pools_and_protos(lab, C, D=8, prob=None, threshold=1.0, seed=0):
    protos = torch.randn(C, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(lab.device)
    return mona_ext.class_pools(lab, C, prob=prob, strong_threshold=threshold), protos


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
    _, nidx, weight = mona_ext.sample_negatives(*pools, protos, num_queries=64, num_negatives=256, temperature=0.5,
                                                generator=torch.Generator(device).manual_seed(0))
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
    qidx, nidx, _ = mona_ext.sample_negatives(*pools, protos, num_queries=4096, num_negatives=64,
                                              generator=torch.Generator().manual_seed(3))
    # negatives of class 0's queries are class-1 pixels, uniform over the 32 of them
    counts = torch.bincount(nidx[0].reshape(-1), minlength=64)[lab.reshape(-1) == 1]
    assert chi_square_pvalue(counts, torch.full((32,), 1 / 32, dtype=torch.float64)) > 1e-4
    # queries of class 0 come only from its hard pixels (prob < 0.5), uniformly
    hard_pixels = ((lab.reshape(-1) == 0) & (prob[0, 0].reshape(-1) < 0.5)).nonzero()[:, 0]
    assert set(qidx[0].tolist()) <= set(hard_pixels.tolist())
    q_counts = torch.bincount(qidx[0], minlength=64)[hard_pixels]
    assert chi_square_pvalue(q_counts, torch.full((len(hard_pixels),), 1 / len(hard_pixels), dtype=torch.float64)) > 1e-4


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
    q, _, w = mona_ext.sample_negatives(*pools, protos, num_queries=64, num_negatives=4, query_mode="balanced", generator=g)
    assert set(q[0, :32].tolist()) <= hard_px and not (set(q[0, 32:].tolist()) & hard_px)
    assert w.tolist() == [0.5, 0.5]
    q, _, _ = mona_ext.sample_negatives(*pools, protos, num_queries=64, num_negatives=4, query_mode="all", generator=g)
    assert set(q[0].tolist()) <= set((lab.reshape(-1) == 0).nonzero()[:, 0].tolist())


@pytest.mark.parametrize("device", DEVICES)
def test_sampler_deterministic_and_generator_driven(device):
    _, lab, prob = scene(B=2, H=8, W=8, C=3, device=device)
    pools, protos = pools_and_protos(lab, 3)
    run = lambda seed: mona_ext.sample_negatives(*pools, protos, 16, 32, generator=torch.Generator(device).manual_seed(seed))
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
        q, nidx, w = mona_ext.sample_negatives(*pools, protos, 32, 64, negatives=negatives, bank_fill=fill, bank_size=K,
                                               generator=torch.Generator().manual_seed(1))
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


def test_sampler_opcheck():
    lab = torch.randint(0, 3, (2, 5, 5))
    pools, protos = pools_and_protos(lab, 3)
    # The op draws random numbers: opcheck compares repeated runs, so give each run its own
    # identically seeded generator via the fake/real consistency checks only.
    torch.library.opcheck(torch.ops.mona.sample_negatives.default, (*pools, protos, 4, 6, 0.5, "batch", "hard", None, 0,
                                                                   torch.Generator().manual_seed(0)),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


# ---------------------------------------------------------------------------------------------- contrast_infonce

def sampled(device="cpu", dtype=torch.float64, C=3, Q=5, M=7, channels_last=False, seed=0, bank=False):
    f, lab, prob = scene(B=2, D=6, H=5, W=6, C=C, device=device, dtype=dtype, seed=seed, channels_last=channels_last)
    keys = scene(B=2, D=6, H=5, W=6, C=C, device=device, dtype=dtype, seed=seed + 1, channels_last=channels_last)[0]
    pools = mona_ext.class_pools(lab, C)
    protos, _ = mona_ext.class_mean(keys, lab, C)
    bank_t, fill = None, None
    if bank:
        bank_t = torch.randn(C, 4, 6, dtype=dtype, device=device)
        fill = torch.tensor([4, 2, 3], device=device)
    qidx, nidx, w = mona_ext.sample_negatives(*pools, protos, Q, M, negatives="both" if bank else "batch",
                                              bank_fill=fill, bank_size=4 if bank else 0,
                                              generator=torch.Generator(device).manual_seed(seed))
    return f, keys, protos, qidx, nidx, w, bank_t


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("bank", [False, True])
def test_infonce_matches_reference_loss_and_grad(device, channels_last, bank):
    f, keys, protos, qidx, nidx, w, bank_t = sampled(device=device, channels_last=channels_last, bank=bank)
    f1, f2 = f.clone().requires_grad_(True), f.clone().requires_grad_(True)
    loss = mona_ext.contrast_infonce(f1, keys, protos, qidx, nidx, w, 0.5, bank=bank_t)
    ref = reference.contrast_infonce(f2, keys, protos, qidx, nidx, w, 0.5, bank=bank_t)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(f1.grad, f2.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("threads", [1, 2])
def test_infonce_nchw_keys_match_channels_last_keys(dtype, threads):
    """The CPU kernel copies NCHW keys in blocks of up to 1024 keys into a row buffer, 64 keys and 16
    channels at a time (here ~1900 keys with pairs: two key blocks, the last tile partial; D = 40:
    two full channel groups and a partial one; bank rows included), and reads channels-last keys row
    by row: the same values in the same order, so bitwise the same loss and gradient."""
    g = torch.Generator().manual_seed(3)
    C, D, Q, M = 3, 40, 32, 64
    f = torch.randn(2, D, 32, 32, generator=g, dtype=dtype)
    keys = torch.randn(2, D, 32, 32, generator=g, dtype=dtype)
    lab = torch.randint(0, C, (2, 32, 32), generator=g)
    bank = torch.randn(C, 5, D, generator=g, dtype=dtype)
    protos, _ = mona_ext.class_mean(keys, lab, C)
    qidx, nidx, w = mona_ext.sample_negatives(*mona_ext.class_pools(lab, C), protos, Q, M, negatives="both",
                                              bank_fill=torch.tensor([5, 2, 4]), bank_size=5,
                                              generator=torch.Generator().manual_seed(0))
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = {}
        for layout in ("nchw", "channels_last"):
            k = keys if layout == "nchw" else keys.contiguous(memory_format=torch.channels_last)
            x = f.clone().requires_grad_(True)
            loss = mona_ext.contrast_infonce(x, k, protos, qidx, nidx, w, 0.5, bank=bank)
            loss.backward()
            out[layout] = (loss.detach(), x.grad)
    finally:
        torch.set_num_threads(old)
    torch.testing.assert_close(out["nchw"][0], out["channels_last"][0], rtol=0, atol=0)
    torch.testing.assert_close(out["nchw"][1], out["channels_last"][1], rtol=0, atol=0)
    assert out["nchw"][1].abs().sum() > 0


@pytest.mark.parametrize("device", DEVICES)
def test_infonce_float32_matches_reference(device):
    f, keys, protos, qidx, nidx, w, _ = sampled(device=device, dtype=torch.float32, Q=16, M=32)
    f1, f2 = f.clone().requires_grad_(True), f.clone().requires_grad_(True)
    loss = mona_ext.contrast_infonce(f1, keys, protos, qidx, nidx, w, 0.1)
    ref = reference.contrast_infonce(f2, keys, protos, qidx, nidx, w, 0.1)
    torch.testing.assert_close(loss, ref, rtol=2e-6, atol=2e-6)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(f1.grad, f2.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bank", [False, True])
def test_infonce_gradcheck(device, bank):
    f, keys, protos, qidx, nidx, w, bank_t = sampled(device=device, Q=3, M=4, bank=bank)
    f.requires_grad_(True)
    fn = lambda x: mona_ext.contrast_infonce(x, keys, protos, qidx, nidx, w, 0.5, bank=bank_t)
    assert torch.autograd.gradcheck(fn, (f,))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("requires_grad", [False, True])
def test_infonce_opcheck(device, requires_grad):
    f, keys, protos, qidx, nidx, w, bank_t = sampled(device=device, bank=True)
    f.requires_grad_(requires_grad)
    torch.library.opcheck(torch.ops.mona.contrast_infonce.default, (f, keys, protos, qidx, nidx, w, 0.5, bank_t))


@pytest.mark.parametrize("device", DEVICES)
def test_infonce_backward_opcheck(device):
    f, keys, protos, qidx, nidx, w, bank_t = sampled(device=device, bank=True)
    _, rows = torch.ops.mona.contrast_infonce(f, keys, protos, qidx, nidx, w, 0.5, bank_t, True)
    torch.library.opcheck(torch.ops.mona.contrast_infonce_backward.default,
                          (torch.tensor(0.7, dtype=f.dtype, device=device), f, qidx, w, rows))


def test_infonce_without_grad_rows():
    f, keys, protos, qidx, nidx, w, _ = sampled()
    loss, rows = torch.ops.mona.contrast_infonce(f, keys, protos, qidx, nidx, w, 0.5, None, False)
    assert rows.shape == (0,)
    torch.testing.assert_close(loss, reference.contrast_infonce(f, keys, protos, qidx, nidx, w, 0.5))
    x = f.clone().requires_grad_(True)
    loss, _ = torch.ops.mona.contrast_infonce(x, keys, protos, qidx, nidx, w, 0.5, None, False)
    with pytest.raises(RuntimeError, match="compute_grad=False"):
        loss.backward()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.update(temperature=-1.0), "temperature must be positive"),
        (lambda a: a.update(key_features=a["key_features"][:, :3]), "key_features must have the features' shape"),
        (lambda a: a.update(prototypes=a["prototypes"][:, :3]), r"prototypes must be \[C, D\] with D = 6"),
        (lambda a: a.update(query_index=a["query_index"].int()), r"query_index must be int64 \[C, Q\]"),
        (lambda a: a.update(query_index=a["query_index"][:, :0], negative_index=a["negative_index"][:, :0]),
         "num_queries must be positive"),
        (lambda a: a.update(negative_index=a["negative_index"][:2]), r"negative_index must be int64 \[C, Q, M\]"),
        (lambda a: a.update(bank=torch.zeros(3, 4, 5, dtype=torch.float64)), r"bank must be \[C, K, D\]"),
        (lambda a: a.update(features=a["features"].float()), "key_features dtype"),
    ],
)
def test_infonce_errors(change, message):
    f, keys, protos, qidx, nidx, w, _ = sampled()
    args = dict(features=f, key_features=keys, prototypes=protos, query_index=qidx, negative_index=nidx,
                class_weight=w, temperature=0.5, bank=None)
    change(args)
    with pytest.raises((ValueError, TypeError), match=message):
        mona_ext.contrast_infonce(**args)


@settings(max_examples=25, deadline=None)
@given(temperature=st.sampled_from([1e-3, 0.05, 0.5, 1e3]), D=st.integers(1, 9), seed=st.integers(0, 1000),
       scale=st.sampled_from([0.0, 1e-6, 1.0, 1e4]))
def test_infonce_extreme_values_finite(temperature, D, seed, scale):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(2, D, 4, 4, generator=g) * scale
    lab = torch.randint(0, 3, (2, 4, 4), generator=g)
    pools = mona_ext.class_pools(lab, 3)
    protos, _ = mona_ext.class_mean(f, lab, 3)
    qidx, nidx, w = mona_ext.sample_negatives(*pools, protos, 4, 8, temperature=temperature, generator=g)
    x = f.clone().requires_grad_(True)
    loss = mona_ext.contrast_infonce(x, f, protos, qidx, nidx, w, temperature)
    loss.backward()
    ref = reference.contrast_infonce(f.double(), f.double(), protos.double(), qidx, nidx, w, temperature)
    assert torch.isfinite(loss) and torch.all(torch.isfinite(x.grad))
    torch.testing.assert_close(loss.double(), ref, rtol=1e-4, atol=1e-4 * max(1.0, 1 / temperature))


@pytest.mark.parametrize("kernel_device", KERNEL_DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_device_parts_match_cpu(kernel_device, channels_last):
    dev = device_of(kernel_device)
    f, lab, prob = scene(B=2, D=64, H=32, W=32, C=4, dtype=torch.float32, channels_last=channels_last)
    cpu_pools = mona_ext.class_pools(lab, 4, prob=prob, strong_threshold=0.5)
    with on(kernel_device):
        gpu_pools = mona_ext.class_pools(lab.to(dev), 4, prob=prob.to(dev), strong_threshold=0.5)
    assert all(torch.equal(a, b.cpu()) for a, b in zip(cpu_pools, gpu_pools))
    protos, _ = mona_ext.class_mean(f, lab, 4)
    q, n, w = mona_ext.sample_negatives(*cpu_pools, protos, 32, 64, generator=torch.Generator().manual_seed(0))
    x_cpu, x_gpu = f.clone().requires_grad_(True), f.to(dev).requires_grad_(True)
    l_cpu = mona_ext.contrast_infonce(x_cpu, f, protos, q, n, w, 0.5)
    with on(kernel_device):
        l_gpu = mona_ext.contrast_infonce(x_gpu, f.to(dev), protos.to(dev), q.to(dev), n.to(dev), w.to(dev), 0.5)
    torch.testing.assert_close(l_gpu.cpu(), l_cpu, rtol=1e-5, atol=1e-5)
    l_cpu.backward()
    with on(kernel_device):
        l_gpu.backward()
    torch.testing.assert_close(x_gpu.grad.cpu(), x_cpu.grad, rtol=1e-4, atol=1e-6)


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
    for a, b, name in zip(flat, mona_ext.class_pools(lab.reshape(-1), 5, valid=valid.reshape(-1)),
                          ["offsets", "counts", "hard_counts", "permutation"]):
        assert torch.equal(a.cpu(), b), name
    assert 0 < int(cpu[2].sum()) < int(cpu[1].sum())  # hard and easy pixels


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
    kw = dict(temperature=0.3, negatives=negatives, query_mode=query_mode, bank_fill=fill,
              bank_size=5 if fill is not None else 0)
    cpu = mona_ext.sample_negatives(*pools, protos, 16, 24, generator=torch.Generator().manual_seed(7), **kw)
    kw["bank_fill"] = fill.to(dev) if fill is not None else None
    with on(kernel_device):
        ours = mona_ext.sample_negatives(*(t.to(dev) for t in pools), protos.to(dev), 16, 24,
                                         generator=torch.Generator(dev).manual_seed(7), **kw)
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
            assert torch.all(bank_rows // 5 != c) and torch.all(bank_rows % 5 < torch.tensor([3, 0, 5, 2])[bank_rows // 5])
            if negatives == "bank":
                assert torch.all(idx >= N)
            if negatives == "batch":
                assert torch.all(idx < N)


@pytest.mark.parametrize("kernel_device", KERNEL_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("bank", [False, True])
def test_device_infonce_dtypes_and_flat_features_match_cpu(kernel_device, dtype, flat, bank):
    """contrast_infonce in every dtype, on [B, D, H, W] and [N, D] features, with and without bank
    keys: loss and gradient of the device kernels against the CPU kernels."""
    dev = device_of(kernel_device)
    f, keys, protos, qidx, nidx, w, bank_t = sampled(dtype=torch.float64, Q=6, M=9, seed=2, bank=bank)
    if flat:
        f, keys = (t.permute(0, 2, 3, 1).reshape(-1, t.shape[1]) for t in (f, keys))
    f, keys, protos = f.to(dtype), keys.to(dtype), protos.to(dtype)
    bank_t = bank_t.to(dtype) if bank_t is not None else None
    res = []
    for dev_, ctx in (("cpu", on("cpu")), (dev, on(kernel_device))):
        with ctx:
            x = f.to(dev_).requires_grad_(True)
            loss = mona_ext.contrast_infonce(x, keys.to(dev_), protos.to(dev_), qidx.to(dev_), nidx.to(dev_), w.to(dev_),
                                             0.5, bank=bank_t.to(dev_) if bank_t is not None else None)
            (loss * 2).backward()
        res.append((loss.detach().cpu(), x.grad.cpu()))
    if dtype == torch.float64:
        tols = [dict(rtol=1e-12, atol=1e-12)] * 2
    elif dtype == torch.float32:  # as test_infonce_float32_matches_reference
        tols = [dict(rtol=1e-5, atol=1e-6), dict(rtol=1e-4, atol=1e-6)]
    else:  # the loss is float32; the gradient is rounded to fp16 / bf16
        tols = [dict(rtol=2 * torch.finfo(dtype).eps, atol=2 * torch.finfo(dtype).eps)] * 2
    for name, u, v, tol in zip(["loss", "grad"], *res, tols):
        assert u.dtype == v.dtype, name
        torch.testing.assert_close(v, u, **tol, msg=lambda msg: f"{name}: {msg}")
    assert res[1][1].dtype == dtype and res[0][1].abs().sum() > 0


@pytest.mark.emu
@pytest.mark.parametrize("case", ["class_pools", "sample_negatives", "contrast_infonce"])
def test_emu_mismatched_device_message(case):
    f, keys, protos, qidx, nidx, w, bank_t = sampled(bank=True)
    _, lab, prob = scene()
    with on(EMU):
        if case == "class_pools":
            with pytest.raises(ValueError, match="class_pools: prob is on meta but labels are on cpu"):
                mona_ext.class_pools(lab, 3, prob=prob.to("meta"))
        elif case == "sample_negatives":
            pools = mona_ext.class_pools(lab, 3)
            with pytest.raises(ValueError, match="sample_negatives: prototypes is on meta but offsets is on cpu"):
                mona_ext.sample_negatives(*pools, protos.to("meta"), 4, 4)
        else:
            with pytest.raises(ValueError, match="contrast_infonce: bank is on meta but features is on cpu"):
                mona_ext.contrast_infonce(f, keys, protos, qidx, nidx, w, 0.5, bank=bank_t.to("meta"))
