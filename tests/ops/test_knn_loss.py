"""torch.ops.mona.knn_loss against mona_ext.reference.knn_loss (F.normalize + topk)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from op_testing import DEVICES, EMU, KERNEL_DEVICES, device_of, is_emulated, on

import mona_ext
from mona_ext import reference
from mona_ext.ops.knn_loss import knn_indices


def make_inputs(B=4, d=16, K=40, device="cpu", dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, d, generator=g, dtype=torch.float64)
    t = torch.randn(B, d, generator=g, dtype=torch.float64)
    q = torch.randn(K, d, generator=g, dtype=torch.float64) * torch.rand(K, 1, generator=g, dtype=torch.float64) * 3
    return [x.to(device=device, dtype=dtype) for x in (s, t, q)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k", [1, 5, 40])
def test_matches_reference(device, k):
    s, t, q = make_inputs(device=device)
    s.requires_grad_(True)
    out = mona_ext.knn_loss(s, t, q, k)
    ref = reference.knn_loss(s, t, q, k)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    (g,) = torch.autograd.grad(out, s)
    (g_ref,) = torch.autograd.grad(ref, s)
    torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)
    assert g.abs().sum() > 0  # the gradient reaches the student (the public code's has none)
    idx = knn_indices(s, t, q, k)
    from torch.nn.functional import normalize

    ref_idx = (normalize(t, dim=1) @ normalize(q, dim=1).T).topk(k, dim=1).indices
    assert torch.equal(idx, ref_idx)


@pytest.mark.parametrize("device", DEVICES)
def test_float32_and_low_precision(device):
    s, t, q = make_inputs(B=6, d=64, K=500, device=device, seed=2)
    s32 = s.float().requires_grad_(True)
    out = mona_ext.knn_loss(s32, t.float(), q.float(), 5)
    s64 = s.clone().requires_grad_(True)
    ref = reference.knn_loss(s64, t, q, 5)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)
    out.backward()
    ref.backward()
    torch.testing.assert_close(s32.grad.double(), s64.grad, rtol=1e-4, atol=1e-6)
    out16 = mona_ext.knn_loss(s.half(), t.half(), q.half(), 5)
    assert out16.dtype == torch.float16 and abs(out16.item() - ref.item()) < 1e-2


def test_ties_go_to_the_lower_index():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [1.0, 0.0]])  # entries 0, 2, 3 tie for teacher e1
    t = torch.tensor([[1.0, 0.0]])
    assert knn_indices(t, t, q, 2).tolist() == [[0, 2]]
    assert knn_indices(t, t, q, 4).tolist() == [[0, 2, 3, 1]]


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_and_student_only(device):
    s, t, q = make_inputs(B=3, d=4, K=7, device=device, seed=1)
    s.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: mona_ext.knn_loss(x, t, q, 3), (s,))
    t2 = t.clone().requires_grad_(True)
    s2 = s.detach().clone().requires_grad_(True)
    mona_ext.knn_loss(s2, t2, q, 3).backward()
    assert t2.grad is None and s2.grad is not None


def test_student_equal_to_its_single_neighbour_gives_minus_one():
    q = torch.randn(10, 6, dtype=torch.float64)
    s = q[3:4] * 5
    assert abs(mona_ext.knn_loss(s, q[3:4], q, 1).item() + 1.0) < 1e-12


@settings(max_examples=30, deadline=None)
@given(B=st.integers(0, 5), d=st.integers(1, 9), K=st.integers(1, 40), data=st.data(), seed=st.integers(0, 2**16))
def test_property_matches_reference(B, d, K, data, seed):
    k = data.draw(st.integers(1, K))
    s, t, q = make_inputs(B, d, K, seed=seed)
    out = mona_ext.knn_loss(s, t, q, k)
    if B == 0:
        assert out.item() == 0.0
        return
    torch.testing.assert_close(out, reference.knn_loss(s, t, q, k), rtol=1e-10, atol=1e-12)
    assert -1 - 1e-12 <= out.item() <= 1 + 1e-12


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(k=6), r"k=6 exceeds the queue size K=5"),
        (dict(k=0), "k must be >= 1, got 0"),
        (dict(q=torch.randn(5, 7)), r"queue must be \[K, d\] with d = 8"),
        (dict(t=torch.randn(4, 8, dtype=torch.float64)), r"teacher and queue must have the student's dtype"),
        (
            dict(
                s=torch.zeros(4, 8, dtype=torch.long),
                t=torch.zeros(4, 8, dtype=torch.long),
                q=torch.zeros(5, 8, dtype=torch.long),
            ),
            "student must be float32",
        ),
    ],
)
def test_bad_input_messages(change, message):
    args = dict(s=torch.randn(4, 8), t=torch.randn(4, 8), q=torch.randn(5, 8), k=3)
    args.update(change)
    with pytest.raises((ValueError, TypeError), match=message):
        mona_ext.knn_loss(args["s"], args["t"], args["q"], args["k"])


@pytest.mark.parametrize("kernel_device", KERNEL_DEVICES)
def test_device_matches_cpu_large(kernel_device):
    dev = device_of(kernel_device)
    # the emulation runs ~1-10 M thread-steps per second: a smaller queue, the same code paths
    size = dict(B=3, d=80, K=600) if is_emulated(kernel_device) else dict(B=6, d=512, K=8192)
    s, t, q = make_inputs(**size, dtype=torch.float32, seed=7)
    res = []
    for dev_, ctx in (("cpu", on("cpu")), (dev, on(kernel_device))):
        with ctx:
            x = s.to(dev_).requires_grad_(True)
            loss, idx = torch.ops.mona.knn_loss(x, t.to(dev_), q.to(dev_), 32)
            loss.backward()
        res.append((loss.cpu(), idx.cpu(), x.grad.cpu()))
    assert torch.equal(res[0][1], res[1][1])
    torch.testing.assert_close(res[1][0], res[0][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(res[1][2], res[0][2], rtol=1e-4, atol=1e-7)


def tied_queue(dtype, K=70, d=40, seed=21):
    """A queue with exact copies of two rows spread over the CUDA kernel's 8 warps (entry j is
    handled by warp j % 8): copies of row a at 3, 11, 19, 27 (one warp), 4, 5, 6, 40, 66 and K - 1
    (other warps), copies of row b at 9, 10, 17, 25. Teachers a, b, a + b, -a."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(2, d, generator=g, dtype=torch.float64)
    q = torch.randn(K, d, generator=g, dtype=torch.float64)
    copies_a, copies_b = [3, 4, 5, 6, 11, 19, 27, 40, 66, K - 1], [9, 10, 17, 25]
    q[copies_a] = base[0]
    q[copies_b] = base[1]
    t = torch.stack([base[0], base[1], base[0] + base[1], -base[0]])
    s = torch.randn(4, d, generator=g, dtype=torch.float64)
    return s.to(dtype), t.to(dtype), q.to(dtype), copies_a, copies_b


# Exact copies of a row must tie in every dtype: the CPU kernel once ranked at::mm's dot products,
# whose GEMM blocking gave the last queue row (float64) a last-bit different value than an identical
# row elsewhere, so the last copy ranked first. It now takes one dot-product loop for every entry.
TIE_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# device vs CPU kernel: float32 as test_device_matches_cpu_large; fp16 / bf16 results are rounded
# once from float32 (one unit in the last place)
LOSS_TOLERANCE = {
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.float64: dict(rtol=1e-12, atol=1e-12),
    torch.float16: dict(rtol=2 * torch.finfo(torch.float16).eps, atol=1e-3),
    torch.bfloat16: dict(rtol=2 * torch.finfo(torch.bfloat16).eps, atol=1e-3),
}


@pytest.mark.parametrize("kernel_device", KERNEL_DEVICES)
@pytest.mark.parametrize("dtype", TIE_DTYPES)
def test_device_ties_across_warps_match_cpu_order(kernel_device, dtype):
    """Equal similarities in entries handled by different warps and by the same warp: the k-way
    merge of the warps' lists must give the CPU kernel's order."""
    dev = device_of(kernel_device)
    s, t, q, _, _ = tied_queue(dtype)
    for k in (1, 3, 10, 13, 24):
        loss_cpu, idx_cpu = torch.ops.mona.knn_loss(s, t, q, k)
        with on(kernel_device):
            loss_dev, idx_dev = torch.ops.mona.knn_loss(s.to(dev), t.to(dev), q.to(dev), k)
        assert torch.equal(idx_dev.cpu(), idx_cpu), (k, idx_dev.cpu(), idx_cpu)
        torch.testing.assert_close(loss_dev.cpu(), loss_cpu, **LOSS_TOLERANCE[dtype])


def _tie_rows():
    rows = []
    for device in DEVICES:
        for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            value = device.values[0]
            rows.append(pytest.param(value, dtype, id=f"{str(dtype)[6:]}-{device.id}", marks=list(device.marks)))
    return rows


@pytest.mark.parametrize("device, dtype", _tie_rows())
def test_exact_copies_in_the_queue_tie_to_the_lower_index(device, dtype):
    s, t, q, copies_a, copies_b = tied_queue(dtype)
    _, idx = torch.ops.mona.knn_loss(s.to(device), t.to(device), q.to(device), len(copies_a))
    assert idx[0].tolist() == copies_a  # the copies of the teacher's row, in index order
    assert idx[1, : len(copies_b)].tolist() == copies_b


@pytest.mark.parametrize("kernel_device", KERNEL_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_device_dtypes_match_cpu_with_backward(kernel_device, dtype):
    """Forward (indices, loss) and backward of every dtype against the CPU kernels, with k > 8 (a
    warp handles several neighbours) and d not a multiple of 32."""
    dev = device_of(kernel_device)
    s, t, q = make_inputs(B=5, d=45, K=90, dtype=dtype, seed=22)
    res = []
    for dev_, ctx in (("cpu", on("cpu")), (dev, on(kernel_device))):
        with ctx:
            x = s.to(dev_).requires_grad_(True)
            loss, idx = torch.ops.mona.knn_loss(x, t.to(dev_), q.to(dev_), 11)
            (loss * 3).backward()
        res.append((loss.detach().cpu(), idx.cpu(), x.grad.cpu()))
    assert torch.equal(res[0][1], res[1][1])
    torch.testing.assert_close(res[1][0], res[0][0], **LOSS_TOLERANCE[dtype])
    torch.testing.assert_close(res[1][2], res[0][2], **LOSS_TOLERANCE[dtype])
    assert res[1][2].dtype == dtype


@pytest.mark.emu
def test_emu_mismatched_device_message():
    s, t, q = make_inputs(B=3, d=8, K=9, dtype=torch.float32)
    with (
        on(EMU),
        pytest.raises(
            ValueError, match=r"knn_loss: teacher \(cpu\) and queue \(meta\) must be on the student's device cpu"
        ),
    ):
        mona_ext.knn_loss(s, t, q.to("meta"), 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_result_does_not_depend_on_the_thread_count(dtype):
    """The CPU kernel scores the queue in chunks of 128 rows spread over threads and merges the
    threads' top-k lists: exact copies of the teacher's row in different chunks (and at both ends
    of the queue) still come out in index order, and 1 or 2 threads give the same indices and loss."""
    g = torch.Generator().manual_seed(5)
    K, d = 1000, 24
    q = torch.randn(K, d, generator=g, dtype=torch.float64)
    base = torch.randn(d, generator=g, dtype=torch.float64)
    copies = [0, 127, 128, 500, 873, K - 1]
    q[copies] = base * torch.tensor([1.0, 2.0, 0.5, 4.0, 1.0, 0.25], dtype=torch.float64)[:, None]
    t = torch.stack([base, -base, torch.randn(d, generator=g, dtype=torch.float64)])
    s = torch.randn(3, d, generator=g, dtype=torch.float64)
    s, t, q = (x.to(dtype) for x in (s, t, q))
    old = torch.get_num_threads()
    out = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out.append(torch.ops.mona.knn_loss(s, t, q, 8))
    finally:
        torch.set_num_threads(old)
    assert out[0][1][0, : len(copies)].tolist() == copies  # power-of-two multiples: the same cosine exactly
    assert torch.equal(out[0][1], out[1][1])
    assert torch.equal(out[0][0], out[1][0])
    ref_loss = reference.knn_loss(s.double(), t.double(), q.double(), 8)
    torch.testing.assert_close(out[0][0].double(), ref_loss, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-7)


# The CUDA kernels split each row's queue scan across blocks (cuda::queue_splits in
# csrc/common/cuda_utils.cuh: about 1024 blocks in all, at least 256 entries per split, so
# splits = max(1, min(ceil(1024 / B), K // 256)) of ceil(K / splits) entries), select the top k of
# every split, then merge the splits' lists. The launch shapes are worked out by hand from that rule.
SPLIT_ROWS = [
    pytest.param(5, 1000, 3, 40, id="B5-K1000-3splits-k40"),  # 334, 334, 332 entries
    pytest.param(2, 1025, 4, 256, id="B2-K1025-4splits-k256"),  # 257 x 3, 254: the last split holds fewer than k
    pytest.param(7, 513, 2, 9, id="B7-K513-2splits-k9"),  # 257, 256
    pytest.param(3, 300, 1, 17, id="B3-K300-1split-k17"),
]


@pytest.mark.parametrize("kernel_device", KERNEL_DEVICES)
@pytest.mark.parametrize("B, K, splits, k", SPLIT_ROWS)
def test_device_queue_splits_match_cpu(kernel_device, B, K, splits, k):
    """Indices (exactly), loss and gradient with the queue split across blocks: float64 against the
    CPU kernel."""
    import emu

    dev = device_of(kernel_device)
    s, t, q = make_inputs(B=B, d=20, K=K, seed=K)
    res = []
    for dev_, ctx in (("cpu", on("cpu")), (dev, on(kernel_device))):
        with ctx:
            x = s.to(dev_).requires_grad_(True)
            loss, idx = torch.ops.mona.knn_loss(x, t.to(dev_), q.to(dev_), k)
            (loss * 3).backward()
        res.append((loss.detach().cpu(), idx.cpu(), x.grad.cpu()))
    assert torch.equal(res[1][1], res[0][1])
    torch.testing.assert_close(res[1][0], res[0][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(res[1][2], res[0][2], rtol=1e-10, atol=1e-12)
    if is_emulated(kernel_device):
        grids = emu.last_grids()
        assert grids["knn_loss_topk_kernel<double>"] == (splits, B, 1)
        assert grids["knn_loss_backward_dots_kernel<double>"] == ((k + 7) // 8, B, 1)


@pytest.mark.parametrize("kernel_device", KERNEL_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("with_nan", [False, True])
def test_device_ties_across_splits_go_to_the_lower_index(kernel_device, dtype, with_nan):
    """Exact copies of the teacher's row in different splits (K = 1030: splits [0, 258), [258, 516),
    [516, 774), [774, 1030)), at a split's first and last entry too: the merge of the splits' lists
    gives them in index order; a NaN queue row (split 2) ranks first, as torch.topk."""
    dev = device_of(kernel_device)
    g = torch.Generator().manual_seed(40)
    K, d = 1030, 16
    q = torch.randn(K, d, generator=g, dtype=torch.float64)
    copies = [3, 257, 258, 600, 774, 1029]
    row = torch.randn(d, generator=g, dtype=torch.float64)
    q[copies] = row
    t = torch.stack([row, torch.randn(d, generator=g, dtype=torch.float64)])
    s = torch.randn(2, d, generator=g, dtype=torch.float64)
    if with_nan:
        q[700, 5] = float("nan")
    s, t, q = s.to(dtype), t.to(dtype), q.to(dtype)
    k = len(copies) + 2
    _, idx_cpu = torch.ops.mona.knn_loss(s, t, q, k)
    with on(kernel_device):
        loss_dev, idx_dev = torch.ops.mona.knn_loss(s.to(dev), t.to(dev), q.to(dev), k)
    expected = ([700] if with_nan else []) + copies
    assert idx_dev[0].cpu().tolist()[: len(expected)] == expected
    assert torch.equal(idx_dev.cpu(), idx_cpu)
    assert torch.isnan(loss_dev).item() == with_nan


@pytest.mark.emu
def test_emu_split_queue_is_bitwise_reproducible_whatever_the_schedule():
    """No float atomics and fixed merge orders: shuffling the order of blocks and threads (the
    emulation's schedules) changes no bit of the indices, loss or gradient."""
    import emu

    s, t, q = make_inputs(B=3, d=20, K=800, dtype=torch.float32, seed=6)  # 3 splits per row
    outs = []
    for seed in (None, 0, 1):
        with emu.emulated(schedule_seed=seed):
            x = s.clone().requires_grad_(True)
            loss, idx = torch.ops.mona.knn_loss(x, t, q, 20)
            loss.backward()
        outs.append((loss.detach(), idx, x.grad))
    assert emu.last_grids()["knn_loss_topk_kernel<float>"] == (3, 3, 1)
    for o in outs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(o, outs[0]))
