"""torch.ops.mona.similarity_kl against mona_ext.reference.similarity_kl (F.normalize + F.kl_div)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from op_testing import DEVICES, EMU, KERNEL_DEVICES, device_of, is_emulated, on

import mona_ext
from mona_ext import reference


def make_inputs(B=4, d=16, K=40, device="cpu", dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, d, generator=g, dtype=torch.float64) * 3
    t = s + 0.5 * torch.randn(B, d, generator=g, dtype=torch.float64)
    q = torch.randn(K, d, generator=g, dtype=torch.float64) * torch.rand(K, 1, generator=g, dtype=torch.float64) * 4
    return [x.to(device=device, dtype=dtype) for x in (s, t, q)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("taus", [(0.1, 0.01), (1.0, 1.0), (0.05, 0.5)])
def test_matches_reference_float64(device, taus):
    s, t, q = make_inputs(device=device)
    s.requires_grad_(True)
    out = mona_ext.similarity_kl(s, t, q, *taus)
    ref = reference.similarity_kl(s, t, q, *taus)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    (g,) = torch.autograd.grad(out, s)
    (g_ref,) = torch.autograd.grad(ref, s)
    torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-12)


def test_is_isd_kl_div_formula():
    # ISD: F.kl_div(log_softmax(student logits), softmax(teacher logits), reduction="batchmean")
    s, t, q = make_inputs(B=3, d=8, K=10)
    qn = F.normalize(q, dim=1)
    logit_s = F.normalize(s, dim=1) @ qn.T / 0.1
    logit_t = F.normalize(t, dim=1) @ qn.T / 0.01
    isd = F.kl_div(F.log_softmax(logit_s, 1), F.softmax(logit_t, 1), reduction="batchmean")
    torch.testing.assert_close(mona_ext.similarity_kl(s, t, q, 0.1, 0.01), isd)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("K", [1, 7, 300])
def test_float32_matches_float64_reference(device, K):
    s, t, q = make_inputs(B=5, d=64, K=K, device=device, seed=K)
    s32 = s.float().requires_grad_(True)
    out = mona_ext.similarity_kl(s32, t.float(), q.float(), 0.1, 0.01)
    s64 = s.clone().requires_grad_(True)
    ref = reference.similarity_kl(s64, t, q, 0.1, 0.01)
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5)
    out.backward()
    ref.backward()
    torch.testing.assert_close(s32.grad.double(), s64.grad, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs(device, dtype):
    s, t, q = make_inputs(B=4, d=32, K=50, device=device, seed=3)
    sl, tl, ql = s.to(dtype), t.to(dtype), q.to(dtype)
    out = mona_ext.similarity_kl(sl, tl, ql, 0.1, 0.1)
    ref = reference.similarity_kl(sl.double(), tl.double(), ql.double(), 0.1, 0.1)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), ref, rtol=2 * torch.finfo(dtype).eps, atol=1e-3)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_and_no_teacher_gradient(device):
    s, t, q = make_inputs(B=3, d=5, K=6, device=device, seed=1)
    s.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: mona_ext.similarity_kl(x, t, q, 0.5, 0.2), (s,))
    # a zero student row (normalisation clamps at eps) still has a finite gradient
    s0 = s.detach().clone()
    s0[1] = 0
    s0.requires_grad_(True)
    out = mona_ext.similarity_kl(s0, t, q, 0.5, 0.2)
    out.backward()
    assert torch.isfinite(s0.grad).all()
    t2, q2 = t.clone().requires_grad_(True), q.clone().requires_grad_(True)
    s2 = s.detach().clone().requires_grad_(True)
    mona_ext.similarity_kl(s2, t2, q2, 0.5, 0.2).backward()
    assert s2.grad is not None and t2.grad is None and q2.grad is None  # documented: student only


def test_identical_student_and_teacher_distributions_give_zero():
    s, _, q = make_inputs(B=4, d=8, K=12)
    assert abs(mona_ext.similarity_kl(s, s.clone() * 2.0, q, 0.3, 0.3).item()) < 1e-12  # scale-invariant cosine


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B", [0, 5])
def test_forward_gradient_equals_the_backward_op(device, B):
    """The gradient the forward computes (compute_grad) is the backward op's for grad_loss = 1; through
    autograd it is scaled by grad_loss, and a second backward of the same graph (recomputed by the
    backward op) gives the same values."""
    s, t, q = make_inputs(B=B, d=12, K=50, device=device, seed=4)
    loss, lse_s, lse_t, grad = torch.ops.mona.similarity_kl(s, t, q, 0.1, 0.01, True)
    _, _, _, none = torch.ops.mona.similarity_kl(s, t, q, 0.1, 0.01, False)
    assert none.numel() == 0
    recomputed = torch.ops.mona.similarity_kl_backward(
        torch.ones((), dtype=s.dtype, device=s.device), s, t, q, lse_s, lse_t, 0.1, 0.01
    )
    torch.testing.assert_close(grad, recomputed, rtol=1e-12, atol=1e-14)
    x = s.clone().requires_grad_(True)
    out = mona_ext.similarity_kl(x, t, q, 0.1, 0.01) * 3.0
    (g1,) = torch.autograd.grad(out, x, retain_graph=True)
    (g2,) = torch.autograd.grad(out, x)
    torch.testing.assert_close(g1, 3.0 * grad, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(g2, g1, rtol=1e-12, atol=1e-14)


@settings(max_examples=30, deadline=None)
@given(
    B=st.integers(0, 5),
    d=st.integers(1, 9),
    K=st.integers(1, 40),
    tau_s=st.sampled_from([0.01, 0.1, 2.0]),
    tau_t=st.sampled_from([0.01, 0.1, 2.0]),
    seed=st.integers(0, 2**16),
)
def test_property_matches_reference(B, d, K, tau_s, tau_t, seed):
    s, t, q = make_inputs(B, d, K, seed=seed)
    out = mona_ext.similarity_kl(s, t, q, tau_s, tau_t)
    if B == 0:
        assert out.item() == 0.0
        return
    torch.testing.assert_close(out, reference.similarity_kl(s, t, q, tau_s, tau_t), rtol=1e-9, atol=1e-10)
    assert out.item() >= -1e-10


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(s=torch.randn(4)), r"student must be \[B, d\]"),
        (dict(t=torch.randn(3, 8)), r"teacher must have the student's shape \[4, 8\]"),
        (dict(q=torch.randn(5, 7)), r"queue must be \[K, d\] with d = 8, got shape \[5, 7\]"),
        (dict(q=torch.randn(0, 8)), "queue must hold at least one entry"),
        (dict(q=torch.randn(5, 8, dtype=torch.float64)), "teacher and queue must have the student's dtype"),
        (dict(tau_s=0.0), "temperatures must be positive, got tau_student=0"),
        (dict(tau_t=-1.0), "tau_teacher=-1"),
    ],
)
def test_bad_input_messages(change, message):
    args = dict(s=torch.randn(4, 8), t=torch.randn(4, 8), q=torch.randn(5, 8), tau_s=0.1, tau_t=0.01)
    args.update(change)
    with pytest.raises((ValueError, TypeError), match=message):
        mona_ext.similarity_kl(args["s"], args["t"], args["q"], args["tau_s"], args["tau_t"])


@pytest.mark.parametrize("kernel_device", KERNEL_DEVICES)
def test_device_matches_cpu_large(kernel_device):
    dev = device_of(kernel_device)
    # the emulation runs ~1-10 M thread-steps per second: a smaller queue, the same code paths
    size = dict(B=3, d=80, K=500) if is_emulated(kernel_device) else dict(B=6, d=512, K=4096)
    s, t, q = make_inputs(**size, dtype=torch.float32, seed=7)
    res = []
    for dev_, ctx in (("cpu", on("cpu")), (dev, on(kernel_device))):
        with ctx:
            x = s.to(dev_).requires_grad_(True)
            out = mona_ext.similarity_kl(x, t.to(dev_), q.to(dev_), 0.1, 0.01)
            out.backward()
        res.append((out.cpu(), x.grad.cpu()))
    torch.testing.assert_close(res[1][0], res[0][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(res[1][1], res[0][1], rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("kernel_device", KERNEL_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_device_dtypes_match_cpu_with_backward(kernel_device, dtype):
    dev = device_of(kernel_device)
    s, t, q = make_inputs(B=5, d=45, K=70, dtype=dtype, seed=8)
    res = []
    for dev_, ctx in (("cpu", on("cpu")), (dev, on(kernel_device))):
        with ctx:
            x = s.to(dev_).requires_grad_(True)
            out = mona_ext.similarity_kl(x, t.to(dev_), q.to(dev_), 0.2, 0.1)
            (out * 2).backward()
        res.append((out.detach().cpu(), x.grad.cpu()))
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=4 * torch.finfo(dtype).eps, atol=1e-3)
    for name, u, v in zip(["loss", "grad"], *res):
        assert u.dtype == v.dtype == dtype, name
        torch.testing.assert_close(v, u, **tol, msg=lambda msg: f"{name}: {msg}")


@pytest.mark.emu
def test_emu_mismatched_device_message():
    s, t, q = make_inputs(B=3, d=8, K=9, dtype=torch.float32)
    with (
        on(EMU),
        pytest.raises(
            ValueError, match=r"similarity_kl: teacher \(meta\) and queue \(cpu\) must be on the student's device cpu"
        ),
    ):
        mona_ext.similarity_kl(s, t.to("meta"), q, 0.1, 0.1)


# The CUDA kernels split each row's queue scan across blocks (cuda::queue_splits in
# csrc/common/cuda_utils.cuh: about 1024 blocks in all, at least 256 entries per split, so
# splits = max(1, min(ceil(1024 / B), K // 256)) of ceil(K / splits) entries). The launch shapes
# below are worked out by hand from that rule; the emulation checks them against the real launch.
SPLIT_ROWS = [
    pytest.param(5, 1000, 3, id="B5-K1000-3splits"),  # 334, 334, 332 entries: the last split shorter
    pytest.param(2, 1030, 4, id="B2-K1030-4splits"),  # 258, 258, 258, 256
    pytest.param(7, 513, 2, id="B7-K513-2splits"),  # 257, 256
    pytest.param(3, 511, 1, id="B3-K511-1split"),  # fewer than 2 x 256 entries: one split
]


@pytest.mark.parametrize("kernel_device", KERNEL_DEVICES)
@pytest.mark.parametrize("B, K, splits", SPLIT_ROWS)
def test_device_queue_splits_match_cpu(kernel_device, B, K, splits):
    """Forward and backward with the queue split across blocks (partial last splits, B not a
    multiple of anything): float64 against the CPU kernel, to rounding."""
    import emu

    dev = device_of(kernel_device)
    s, t, q = make_inputs(B=B, d=24, K=K, seed=K)
    res = []
    for dev_, ctx in (("cpu", on("cpu")), (dev, on(kernel_device))):
        with ctx:
            x = s.to(dev_).requires_grad_(True)
            out = mona_ext.similarity_kl(x, t.to(dev_), q.to(dev_), 0.1, 0.05)
            (out * 3).backward()
        res.append((out.detach().cpu(), x.grad.cpu()))
    torch.testing.assert_close(res[1][0], res[0][0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(res[1][1], res[0][1], rtol=1e-9, atol=1e-12)
    if is_emulated(kernel_device):
        grids = emu.last_grids()
        assert grids["similarity_kl_forward_kernel<double>"] == (splits, B, 1)
        assert grids["similarity_kl_backward_kernel<double>"] == (splits, B, 1)


@pytest.mark.emu
def test_emu_split_queue_is_bitwise_reproducible_whatever_the_schedule():
    """The splits' partial states and gradients are merged in a fixed order (no float atomics): the
    order in which the GPU runs blocks and threads must not change a bit (the emulation shuffles it)."""
    import emu

    s, t, q = make_inputs(B=3, d=20, K=800, dtype=torch.float32, seed=4)  # 3 splits per row
    outs = []
    for seed in (None, 0, 1):
        with emu.emulated(schedule_seed=seed):
            x = s.clone().requires_grad_(True)
            out = mona_ext.similarity_kl(x, t, q, 0.1, 0.01)
            out.backward()
        outs.append((out.detach(), x.grad))
    assert emu.last_grids()["similarity_kl_forward_kernel<float>"] == (3, 3, 1)
    for loss, grad in outs[1:]:
        assert torch.equal(loss, outs[0][0]) and torch.equal(grad, outs[0][1])
