"""torch.ops.mona.class_mean against mona_ext.reference.class_mean."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from op_testing import (
    DEVICES,
    EMU,
    KERNEL_DEVICES,
    assert_within_twice_torch_error,
    device_of,
    is_emulated,
    on,
)

import mona_ext
from mona_ext import reference


def make_inputs(
    B=2,
    D=5,
    H=4,
    W=3,
    C=3,
    device="cpu",
    dtype=torch.float64,
    ignore_frac=0.2,
    weight=False,
    layout="nchw",
    seed=0,
    flat=False,
):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(B, D, H, W, generator=g, dtype=torch.float64)
    lab = torch.randint(0, C, (B, H, W), generator=g)
    lab[torch.rand(B, H, W, generator=g) < ignore_frac] = -1
    w = torch.rand(B, H, W, generator=g, dtype=torch.float64) if weight else None
    if flat:
        f = f.permute(0, 2, 3, 1).reshape(-1, D)
        lab = lab.reshape(-1)
        w = w.reshape(-1) if w is not None else None
    f = f.to(device=device, dtype=dtype)
    if layout == "channels_last" and not flat:
        f = f.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":  # a crop: H and W no longer merge into one stride
        big = torch.zeros(*f.shape[:-1], f.shape[-1] + 2, dtype=dtype, device=device) if not flat else None
        if big is not None:
            big[..., 1:-1] = f
            f = big[..., 1:-1]
    lab = lab.to(device)
    w = (
        w.to(device=device, dtype=dtype if dtype in (torch.float32, torch.float64) else torch.float32)
        if w is not None
        else None
    )
    return f, lab, w


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided", "flat"])
@pytest.mark.parametrize("weight", [False, True])
@pytest.mark.parametrize("label_dtype", [torch.int64, torch.int32])
def test_matches_reference(device, layout, weight, label_dtype):
    f, lab, w = make_inputs(
        B=3, D=7, H=9, W=11, C=4, device=device, weight=weight, layout=layout, flat=layout == "flat"
    )
    lab = lab.to(label_dtype)
    means, counts = mona_ext.class_mean(f, lab, 4, weight=w)
    ref_means, ref_counts = reference.class_mean(f, lab, 4, weight=w)
    torch.testing.assert_close(means, ref_means, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(counts, ref_counts, rtol=1e-12, atol=1e-12)
    assert means.dtype == f.dtype and means.shape == (4, 7) and counts.shape == (4,)


@pytest.mark.parametrize("device", DEVICES)
def test_absent_class_and_all_ignore(device):
    f, lab, _ = make_inputs(C=2, device=device, ignore_frac=0.0)
    means, counts = mona_ext.class_mean(f, lab, 5)  # classes 2, 3, 4 absent
    assert torch.all(means[2:] == 0) and torch.all(counts[2:] == 0)
    lab_ignored = torch.full_like(lab, -1)
    means, counts = mona_ext.class_mean(f, lab_ignored, 3)
    assert torch.all(means == 0) and torch.all(counts == 0)
    # a custom ignore index
    lab255 = torch.where(lab == 1, torch.full_like(lab, 255), lab)
    means, counts = mona_ext.class_mean(f, lab255, 2, ignore_index=255)
    ref_means, ref_counts = reference.class_mean(f, torch.where(lab == 1, -1, lab), 2)
    torch.testing.assert_close(means, ref_means)
    torch.testing.assert_close(counts, ref_counts)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(0, 4, 3, 3), (2, 0, 3, 3), (2, 4, 0, 3), (0, 4)])
def test_zero_size(device, shape):
    f = torch.randn(*shape, device=device, requires_grad=True)
    lab_shape = (shape[0],) if len(shape) == 2 else (shape[0], shape[2], shape[3])
    lab = torch.zeros(lab_shape, dtype=torch.long, device=device)
    means, counts = mona_ext.class_mean(f, lab, 3)
    assert means.shape == (3, shape[1]) and torch.all(means == 0) and torch.all(counts == 0)
    means.sum().backward()
    assert f.grad.shape == f.shape


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_accumulates_in_fp32(device, dtype):
    # Large pools where naive low-precision accumulation would lose digits.
    f64, lab, w = make_inputs(B=4, D=16, H=64, W=64, C=3, device=device, ignore_frac=0.1, seed=3)
    f = f64.to(dtype)
    means, counts = mona_ext.class_mean(f, lab, 3)
    ref64, _ = reference.class_mean(f.double(), lab, 3)
    # plain PyTorch in the same dtype: index_add_ of the low-precision values
    x = f.permute(0, 2, 3, 1).reshape(-1, 16)
    idx = lab.reshape(-1)
    keep = idx >= 0
    torch_sums = torch.zeros(3, 16, dtype=dtype, device=device).index_add_(0, idx[keep], x[keep])
    torch_counts = torch.zeros(3, dtype=dtype, device=device).index_add_(0, idx[keep], torch.ones_like(x[keep, 0]))
    torch_means = torch_sums / torch_counts[:, None]
    assert_within_twice_torch_error(means, torch_means, ref64, floor=torch.finfo(dtype).eps)
    assert counts.dtype == torch.float32


@pytest.mark.parametrize("device", DEVICES)
def test_gradient_matches_reference_layouts(device):
    f, lab, w = make_inputs(
        B=2, D=6, H=5, W=5, C=3, device=device, dtype=torch.float32, layout="channels_last", weight=True
    )
    f1 = f.clone().requires_grad_(True)
    f2 = f.clone().requires_grad_(True)
    g = torch.randn(3, 6, device=device)
    (mona_ext.class_mean(f1, lab, 3, weight=w)[0] * g).sum().backward()
    (reference.class_mean(f2, lab, 3, weight=w)[0] * g).sum().backward()
    torch.testing.assert_close(f1.grad, f2.grad)
    assert f1.grad.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("weight_grad", [False, True])
def test_backward_opcheck(device, weight_grad):
    f, lab, w = make_inputs(device=device, weight=True)
    means, counts = mona_ext.class_mean(f, lab, 3, weight=w)
    args = (torch.randn_like(means), torch.randn_like(counts), f, lab, w, means, counts, -1, weight_grad)
    torch.library.opcheck(torch.ops.mona.class_mean_backward.default, args)


@settings(max_examples=40, deadline=None)
@given(
    B=st.integers(0, 3),
    D=st.integers(1, 6),
    H=st.integers(1, 6),
    W=st.integers(1, 6),
    C=st.integers(1, 5),
    ignore_frac=st.sampled_from([0.0, 0.5, 1.0]),
    weight=st.booleans(),
    layout=st.sampled_from(["nchw", "channels_last"]),
    seed=st.integers(0, 2**16),
)
def test_property_matches_reference(B, D, H, W, C, ignore_frac, weight, layout, seed):
    f, lab, w = make_inputs(B, D, H, W, C, ignore_frac=ignore_frac, weight=weight, layout=layout, seed=seed)
    means, counts = mona_ext.class_mean(f, lab, C, weight=w)
    ref_means, ref_counts = reference.class_mean(f, lab, C, weight=w)
    torch.testing.assert_close(means, ref_means)
    torch.testing.assert_close(counts, ref_counts)
    # a class's mean lies inside the range of its features (a convex combination) when weights >= 0
    for c in range(C):
        sel = lab == c
        if counts[c] > 0:
            vals = f.permute(0, 2, 3, 1)[sel]
            assert torch.all(means[c] <= vals.max(0).values + 1e-12) and torch.all(
                means[c] >= vals.min(0).values - 1e-12
            )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_classes=0), "num_classes must be positive"),
        (dict(features=torch.randn(2, 3, 4)), r"features must be \[B, D, H, W\] or \[N, D\]"),
        (dict(labels=torch.zeros(2, 4, 5, dtype=torch.long)), r"labels must be \[B, H, W\] = \[2, 4, 4\]"),
        (dict(labels=torch.zeros(2, 4, 4)), "labels must be int64 or int32"),
        (dict(features=torch.zeros(2, 3, 4, 4, dtype=torch.int64)), "features must be float32"),
        (dict(weight=torch.ones(2, 4)), "weight must have the labels' shape"),
        (dict(labels=torch.full((2, 4, 4), 3, dtype=torch.long)), "labels contain 3 .*num_classes=3"),
        (dict(labels=torch.full((2, 4, 4), -2, dtype=torch.long)), "labels contain -2 .*ignore_index=-1"),
    ],
)
def test_bad_input_messages(kwargs, message):
    args = dict(
        features=torch.randn(2, 3, 4, 4), labels=torch.zeros(2, 4, 4, dtype=torch.long), num_classes=3, weight=None
    )
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=message):
        mona_ext.class_mean(args["features"], args["labels"], args["num_classes"], weight=args["weight"])


@pytest.mark.parametrize("kernel_device", KERNEL_DEVICES)
def test_device_matches_cpu_large(kernel_device):
    dev = device_of(kernel_device)
    # the emulation runs ~1-10 M thread-steps per second: a smaller image, the same code paths
    size = dict(B=2, D=40, H=24, W=20) if is_emulated(kernel_device) else dict(B=4, D=64, H=64, W=64)
    f, lab, w = make_inputs(**size, C=6, dtype=torch.float32, weight=True, seed=5)
    for layout in (torch.contiguous_format, torch.channels_last):
        fc = f.contiguous(memory_format=layout)
        m_cpu, c_cpu = mona_ext.class_mean(fc, lab, 6, weight=w)
        with on(kernel_device):
            m_gpu, c_gpu = mona_ext.class_mean(fc.to(dev), lab.to(dev), 6, weight=w.to(dev))
        torch.testing.assert_close(m_gpu.cpu(), m_cpu, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(c_gpu.cpu(), c_cpu, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("kernel_device", KERNEL_DEVICES)
@pytest.mark.parametrize(
    "layout, dtype, C",
    [
        ("channels_last", torch.float32, 300),  # 4 * 300 * 32 B > 32 KiB of partials per block
        ("flat", torch.float32, 300),
        ("channels_last", torch.float64, 130),  # 8 * 130 * 32 B > 32 KiB
        ("nchw", torch.float32, 8200),  # 4 * 8200 B > 32 KiB (sums and counts)
        ("nchw", torch.float64, 4100),
    ],
)
def test_device_many_classes_use_global_accumulators(kernel_device, layout, dtype, C):
    """More classes than the block's shared-memory partial sums hold: the run flushes go to the
    global accumulators directly (forward), the backward is unchanged; results match the CPU kernels."""
    dev = device_of(kernel_device)
    f, lab, w = make_inputs(
        B=2, D=35, H=6, W=7, C=7, dtype=dtype, weight=True, layout=layout, flat=layout == "flat", seed=12
    )
    lab = torch.where(lab >= 0, lab * (C // 7) + 3, lab)  # 7 classes spread over [0, C)
    g = torch.Generator().manual_seed(13)
    grad_means = torch.randn(C, 35, generator=g, dtype=torch.float64).to(dtype)
    grad_counts = torch.randn(C, generator=g, dtype=torch.float64).to(w.dtype)

    def run(device):
        x = f.to(device).requires_grad_(True)
        ww = w.to(device).requires_grad_(True)
        means, counts = mona_ext.class_mean(x, lab.to(device), C, weight=ww)
        ((means * grad_means.to(device)).sum() + (counts * grad_counts.to(device)).sum()).backward()
        return [t.detach().cpu() for t in (means, counts, x.grad, ww.grad)]

    expected = run("cpu")
    with on(kernel_device):
        got = run(dev)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    for name, a, b in zip(["means", "counts", "grad features", "grad weight"], got, expected):
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"{name}: {m}")
    assert int((expected[1] > 0).sum()) == 7


@pytest.mark.parametrize("kernel_device", KERNEL_DEVICES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "flat"])
@pytest.mark.parametrize("D", [1, 2, 3, 8, 13, 32, 45])
def test_device_weight_gradient_every_channel_count(kernel_device, layout, D):
    """The weight gradient reduces over D per pixel; on channels-last / [N, D] maps the CUDA kernel
    gives each pixel a group of lanes (the power of two >= D, at most 32; several pixels per warp
    below 32 channels). Every group size, with a pixel count (2 x 11 x 13 = 286) that fills no
    whole block: float64 against the CPU kernel and the reference's autograd."""
    dev = device_of(kernel_device)
    f, lab, w = make_inputs(
        B=2, D=D, H=11, W=13, C=5, dtype=torch.float64, weight=True, layout=layout, flat=layout == "flat", seed=30 + D
    )
    g = torch.Generator().manual_seed(31)
    grad_means = torch.randn(5, D, generator=g, dtype=torch.float64)
    grad_counts = torch.randn(5, generator=g, dtype=torch.float64)

    def run(device, fn):
        ww = w.to(device).requires_grad_(True)
        means, counts = fn(f.to(device), lab.to(device), 5, weight=ww)
        ((means * grad_means.to(device)).sum() + (counts * grad_counts.to(device)).sum()).backward()
        return ww.grad.cpu()

    expected = run("cpu", mona_ext.class_mean)
    reference_grad = run("cpu", reference.class_mean)
    with on(kernel_device):
        got = run(dev, mona_ext.class_mean)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, reference_grad, rtol=1e-10, atol=1e-12)
    assert (got[lab < 0] == 0).all() and (got[lab >= 0] != 0).any()


@pytest.mark.parametrize("kernel_device", KERNEL_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "flat"])
@pytest.mark.parametrize("label_dtype", [torch.int64, torch.int32])
def test_device_low_precision_forward_and_backward_match_cpu(kernel_device, dtype, layout, label_dtype):
    """fp16 / bf16 features: forward and backward (features and weight gradients) of the device
    kernels against the CPU kernels (both accumulate in fp32 and round once)."""
    dev = device_of(kernel_device)
    f, lab, w = make_inputs(
        B=2, D=37, H=5, W=9, C=4, dtype=dtype, weight=True, layout=layout, flat=layout == "flat", seed=14
    )
    lab = lab.to(label_dtype)
    g = torch.Generator().manual_seed(15)
    grad_means = torch.randn(4, 37, generator=g).to(dtype)
    grad_counts = torch.randn(4, generator=g)

    def run(device):
        x = f.to(device).requires_grad_(True)
        ww = w.to(device).requires_grad_(True)
        means, counts = mona_ext.class_mean(x, lab.to(device), 4, weight=ww)
        ((means * grad_means.to(device)).float().sum() + (counts * grad_counts.to(device)).sum()).backward()
        return [t.detach().cpu() for t in (means, counts, x.grad, ww.grad)]

    expected = run("cpu")
    with on(kernel_device):
        got = run(dev)
    eps = torch.finfo(dtype).eps
    for name, a, b in zip(["means", "counts", "grad features", "grad weight"], got, expected):
        assert a.dtype == b.dtype, name
        torch.testing.assert_close(a.float(), b.float(), rtol=2 * eps, atol=2 * eps, msg=lambda m: f"{name}: {m}")
    assert got[2].dtype == dtype and (
        layout != "channels_last" or got[2].is_contiguous(memory_format=torch.channels_last)
    )


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_mismatched_device_message():
    f, lab, _ = make_inputs(dtype=torch.float32)
    with pytest.raises(ValueError, match="labels are on cpu but features are on cuda"):
        mona_ext.class_mean(f.cuda(), lab, 3)


@pytest.mark.emu
@pytest.mark.parametrize(
    "on_meta, message",
    [
        ("labels", "class_mean: labels are on meta but features are on cpu"),
        ("weight", "class_mean: weight is on meta but features are on cpu"),
        ("features", "class_mean: labels are on cpu but features are on meta"),
        (
            "backward_means",
            "class_mean_backward: means is on meta but features is on cpu; all tensors must be on one device",
        ),
    ],
)
def test_emu_mismatched_device_message(on_meta, message):
    # Under the emulation the "GPU" is the CPU: a meta tensor plays the second device, and the
    # emulated CUDA kernel's device checks (class_mean_checks::check_inputs, cuda::DeviceGuard) must name it.
    f, lab, w = make_inputs(dtype=torch.float32, weight=True)
    meta = lambda name, t: t.to("meta") if name == on_meta else t
    with on(EMU), pytest.raises(ValueError, match=message):
        if on_meta == "backward_means":
            means, counts = mona_ext.class_mean(f, lab, 3, weight=w)
            torch.ops.mona.class_mean_backward(
                torch.ones_like(means), torch.ones_like(counts), f, lab, w, means.to("meta"), counts, -1, True
            )
        else:
            mona_ext.class_mean(meta("features", f), meta("labels", lab), 3, weight=meta("weight", w))


@pytest.mark.parametrize("C", [1, 2, 5, 8, 9, 12])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("weight", [False, True])
def test_cpu_nchw_every_class_count(C, dtype, weight):
    """The NCHW CPU forward sums all classes of a row in one pass for C <= 8 and class by class
    above: both agree with the reference, and a non-finite feature stays in its own class."""
    f, lab, w = make_inputs(B=2, D=6, H=7, W=37, C=C, dtype=dtype, weight=weight, seed=C)
    means, counts = mona_ext.class_mean(f, lab, C, weight=w)
    ref_means, ref_counts = reference.class_mean(f, lab, C, weight=w)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(means, ref_means.to(dtype), rtol=tol, atol=tol)
    torch.testing.assert_close(counts.double(), ref_counts.double())
    b, y, x = (lab == 0).nonzero()[0].tolist()
    f = f.clone()
    f[b, 2, y, x] = float("nan")
    means = mona_ext.class_mean(f, lab, C, weight=w)[0]
    assert torch.isnan(means[0, 2])
    assert torch.isfinite(means[1:]).all() and torch.isfinite(means[0, :2]).all()
