"""torch.ops.mona.pixel_kl against mona_ext.reference.pixel_kl (F.log_softmax + F.kl_div)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from op_testing import DEVICES, EMU, KERNEL_DEVICES, assert_within_twice_torch_error, device_of, is_emulated, on

import mona_ext
from mona_ext import reference


def make_inputs(
    B=2, C=4, H=5, W=6, device="cpu", dtype=torch.float64, mask="none", layout="nchw", seed=0, scale=3.0, flat=False
):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(B, C, H, W, generator=g, dtype=torch.float64) * scale
    b = torch.randn(B, C, H, W, generator=g, dtype=torch.float64) * scale
    m = None
    if mask == "bool":
        m = torch.rand(B, H, W, generator=g) > 0.4
    elif mask == "float":
        m = torch.rand(B, H, W, generator=g, dtype=torch.float64)
    elif mask == "empty":
        m = torch.zeros(B, H, W, dtype=torch.bool)
    if flat:
        a = a.permute(0, 2, 3, 1).reshape(-1, C)
        b = b.permute(0, 2, 3, 1).reshape(-1, C)
        m = m.reshape(-1) if m is not None else None
    a, b = a.to(device=device, dtype=dtype), b.to(device=device, dtype=dtype)
    if layout == "channels_last":
        a = a.contiguous(memory_format=torch.channels_last)
        b = b.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":  # crops whose H and W do not merge
        a = F.pad(a, (1, 1))[..., 1:-1]
        b = F.pad(b, (1, 1))[..., 1:-1]
    if m is not None:
        m = m.to(device=device, dtype=m.dtype if m.dtype == torch.bool else dtype)
    return a, b, m


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided", "flat"])
@pytest.mark.parametrize("mask", ["none", "bool", "float"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_matches_reference_float64(device, layout, mask, symmetric):
    a, b, m = make_inputs(B=2, C=5, H=7, W=9, device=device, mask=mask, layout=layout, flat=layout == "flat")
    a.requires_grad_(True)
    b.requires_grad_(True)
    out = mona_ext.pixel_kl(a, b, m, symmetric=symmetric)
    ref = reference.pixel_kl(a, b, m, symmetric=symmetric)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    g = torch.autograd.grad(out, (a, b))
    g_ref = torch.autograd.grad(ref, (a, b))
    for x, y in zip(g, g_ref):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)
    assert out.dtype == a.dtype and out.shape == ()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("C", [1, 2, 8, 33])
def test_float32_matches_float64_reference(device, C):
    a, b, m = make_inputs(B=3, C=C, H=16, W=17, device=device, mask="float", seed=C)
    a32, b32 = a.float().requires_grad_(True), b.float().requires_grad_(True)
    out = mona_ext.pixel_kl(a32, b32, m.float())
    a64, b64 = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    ref = reference.pixel_kl(a64, b64, m)
    torch.testing.assert_close(out.double(), ref, rtol=2e-5, atol=1e-6)
    out.backward()
    ref.backward()
    torch.testing.assert_close(a32.grad.double(), a64.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(b32.grad.double(), b64.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mask", ["none", "bool"])
def test_large_gradients_streamed_to_memory_equal_the_cached_path(mask):
    """Gradients of >= 4 MB with contiguous pixel rows (NCHW float32) are written with non-temporal
    stores (W = 363: rows start at every alignment); channels-last rows are strided and take the
    ordinary stores, with the same per-pixel arithmetic: the same loss and gradients, bit for bit."""
    a, b, m = make_inputs(B=1, C=8, H=363, W=363, dtype=torch.float32, mask=mask, seed=7)
    assert a.numel() * 4 >= 4 << 20
    out = {}
    for layout in ("nchw", "channels_last"):
        x = (a if layout == "nchw" else a.contiguous(memory_format=torch.channels_last)).clone().requires_grad_(True)
        y = (b if layout == "nchw" else b.contiguous(memory_format=torch.channels_last)).clone().requires_grad_(True)
        loss = mona_ext.pixel_kl(x, y, m)
        loss.backward()
        out[layout] = (loss.detach(), x.grad, y.grad)
    for u, v in zip(out["nchw"], out["channels_last"]):
        assert torch.equal(u, v)
    ref_a = a.double().requires_grad_(True)
    reference.pixel_kl(ref_a, b.double(), None if m is None else m).backward()
    torch.testing.assert_close(out["nchw"][1].double(), ref_a.grad, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_accumulates_in_fp32(device, dtype):
    a, b, _ = make_inputs(B=4, C=4, H=32, W=32, device=device, seed=2)
    al, bl = a.to(dtype), b.to(dtype)
    ref64 = reference.pixel_kl(al.double(), bl.double())
    # plain PyTorch in the same dtype
    la, lb = F.log_softmax(al, 1), F.log_softmax(bl, 1)
    torch_same = (
        F.kl_div(lb, la, reduction="none", log_target=True).sum(1)
        + F.kl_div(la, lb, reduction="none", log_target=True).sum(1)
    ).mean()
    out = mona_ext.pixel_kl(al, bl)
    assert out.dtype == dtype
    assert_within_twice_torch_error(out, torch_same, ref64, floor=torch.finfo(dtype).eps)


@pytest.mark.parametrize("device", DEVICES)
def test_which_inputs_get_gradients(device):
    a, b, m = make_inputs(device=device, mask="float")
    a.requires_grad_(True)
    mona_ext.pixel_kl(a, b, m).backward()
    assert a.grad is not None and b.grad is None
    a2, b2, _ = make_inputs(device=device)
    b2.requires_grad_(True)
    mona_ext.pixel_kl(a2, b2).backward()
    b_ref = b2.detach().clone().requires_grad_(True)
    reference.pixel_kl(a2, b_ref).backward()
    torch.testing.assert_close(b2.grad, b_ref.grad)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided", "flat"])
@pytest.mark.parametrize("mask", ["none", "bool", "float"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_gradients_equal_the_recomputing_backward(device, layout, mask, dtype):
    """The single pass (gradients written by the forward) and pixel_kl_backward (recomputed from
    the logits) run the same per-element code with the same scale: bitwise equal."""
    a, b, m = make_inputs(device=device, dtype=dtype, mask=mask, layout=layout, flat=layout == "flat")
    for sym in (True, False):
        loss, wsum, ga, gb = torch.ops.mona.pixel_kl(a, b, m, sym, True, True)
        loss_only, wsum2, ga0, gb0 = torch.ops.mona.pixel_kl(a, b, m, sym)
        assert ga.shape == a.shape and gb.shape == b.shape and ga0.numel() == 0 and gb0.numel() == 0
        assert torch.equal(loss, loss_only) and torch.equal(wsum, wsum2)
        ra, rb = torch.ops.mona.pixel_kl_backward(
            torch.ones((), dtype=dtype, device=a.device), a, b, m, wsum, sym, True, True
        )
        assert torch.equal(ga, ra) and torch.equal(gb, rb)


@pytest.mark.parametrize("device", DEVICES)
def test_backward_scales_the_forward_gradients_and_can_run_twice(device):
    a, b, m = make_inputs(device=device, mask="float")
    a.requires_grad_(True)
    b.requires_grad_(True)
    loss = mona_ext.pixel_kl(a, b, m) * 3.0  # grad_loss = 3: the fused gradients are scaled
    loss.backward(retain_graph=True)
    ga1, gb1 = a.grad.clone(), b.grad.clone()
    ar, br = a.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True)
    (reference.pixel_kl(ar, br, m) * 3.0).backward()
    torch.testing.assert_close(ga1, ar.grad)
    torch.testing.assert_close(gb1, br.grad)
    # A second backward through the same graph recomputes (the fused buffers were handed on).
    a.grad = b.grad = None
    loss.backward()
    torch.testing.assert_close(a.grad, ga1, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(b.grad, gb1, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("device", DEVICES)
def test_no_gradient_pass_without_grad_mode(device):
    a, b, m = make_inputs(device=device, mask="bool")
    a.requires_grad_(True)
    with torch.no_grad():
        out = mona_ext.pixel_kl(a, b, m)
    assert out.grad_fn is None
    torch.testing.assert_close(out, reference.pixel_kl(a.detach(), b, m))


@pytest.mark.parametrize("device", DEVICES)
def test_empty_mask_and_zero_size_give_zero_with_grad_path(device):
    a, b, m = make_inputs(device=device, mask="empty")
    a.requires_grad_(True)
    out = mona_ext.pixel_kl(a, b, m)
    assert out.item() == 0.0
    out.backward()
    assert torch.all(a.grad == 0) and not torch.isnan(a.grad).any()
    z = torch.zeros(0, 3, 4, 4, device=device, requires_grad=True)
    out = mona_ext.pixel_kl(z, z.detach())
    assert out.item() == 0.0
    out.backward()
    assert z.grad.shape == z.shape


@pytest.mark.parametrize("device", DEVICES)
def test_extreme_logits_are_finite_and_match(device):
    a, b, _ = make_inputs(B=1, C=4, H=3, W=3, device=device, scale=1.0)
    a = a * 1e4  # saturated softmaxes: probabilities of exactly 0 and 1
    b = b * -1e3
    a.requires_grad_(True)
    out = mona_ext.pixel_kl(a, b)
    ref = reference.pixel_kl(a, b)
    assert torch.isfinite(out)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-6)
    (g,) = torch.autograd.grad(out, a)
    (g_ref,) = torch.autograd.grad(ref, a)
    assert torch.isfinite(g).all()
    torch.testing.assert_close(g, g_ref, rtol=1e-7, atol=1e-9)
    # identical inputs: exactly zero divergence
    same = mona_ext.pixel_kl(b, b.clone())
    assert abs(same.item()) < 1e-12


@settings(max_examples=40, deadline=None)
@given(
    B=st.integers(0, 3),
    C=st.integers(1, 6),
    H=st.integers(1, 6),
    W=st.integers(1, 6),
    mask=st.sampled_from(["none", "bool", "float", "empty"]),
    symmetric=st.booleans(),
    scale=st.sampled_from([0.01, 1.0, 30.0]),
    layout=st.sampled_from(["nchw", "channels_last"]),
    seed=st.integers(0, 2**16),
)
def test_property_matches_reference(B, C, H, W, mask, symmetric, scale, layout, seed):
    a, b, m = make_inputs(B, C, H, W, mask=mask, layout=layout, seed=seed, scale=scale)
    out = mona_ext.pixel_kl(a, b, m, symmetric)
    if B == 0:
        assert out.item() == 0.0
        return
    ref = reference.pixel_kl(a, b, m, symmetric)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    assert out.item() >= -1e-12  # a KL divergence is non-negative
    if symmetric:  # symmetric KL is symmetric in its arguments
        torch.testing.assert_close(mona_ext.pixel_kl(b, a, m), out, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(a=torch.randn(2, 3, 4)), r"logits_a must be \[B, C, H, W\] or \[N, C\]"),
        (dict(b=torch.randn(2, 3, 4, 5)), r"logits_b must have logits_a's shape \[2, 3, 4, 4\]"),
        (
            dict(a=torch.zeros(2, 3, 4, 4, dtype=torch.long), b=torch.zeros(2, 3, 4, 4, dtype=torch.long)),
            "logits_a must be float32",
        ),
        (dict(b=torch.randn(2, 3, 4, 4, dtype=torch.float64)), "logits_b must have logits_a's dtype"),
        (dict(m=torch.ones(2, 4, 5)), r"mask must be \[B, H, W\] = \[2, 4, 4\], got \[2, 4, 5\]"),
        (dict(m=torch.ones(2, 4, 4, dtype=torch.long)), "mask must be floating or bool"),
        (dict(a=torch.randn(2, 0, 4, 4), b=torch.randn(2, 0, 4, 4)), "need at least one class"),
    ],
)
def test_bad_input_messages(change, message):
    args = dict(a=torch.randn(2, 3, 4, 4), b=torch.randn(2, 3, 4, 4), m=None)
    args.update(change)
    with pytest.raises((ValueError, TypeError), match=message):
        mona_ext.pixel_kl(args["a"], args["b"], args["m"])


@pytest.mark.parametrize("kernel_device", KERNEL_DEVICES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_device_matches_cpu_large(kernel_device, layout):
    dev = device_of(kernel_device)
    # the emulation runs ~1-10 M thread-steps per second: a smaller image (still several blocks)
    size = dict(B=2, C=8, H=40, W=30) if is_emulated(kernel_device) else dict(B=4, C=8, H=64, W=64)
    a, b, m = make_inputs(**size, dtype=torch.float32, mask="float", layout=layout, seed=9)
    outs = []
    for dev_, ctx in (("cpu", on("cpu")), (dev, on(kernel_device))):
        with ctx:
            x, y = a.to(dev_).requires_grad_(True), b.to(dev_).requires_grad_(True)
            loss = mona_ext.pixel_kl(x, y, m.to(dev_))
            loss.backward()
        outs.append((loss.cpu(), x.grad.cpu(), y.grad.cpu()))
    for u, v in zip(*outs):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kernel_device", KERNEL_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "flat"])
def test_device_dtypes_match_cpu_with_backward(kernel_device, dtype, layout):
    """Every dtype and layout, forward and backward (both inputs, bool mask), against the CPU kernels."""
    dev = device_of(kernel_device)
    a, b, m = make_inputs(
        B=2,
        C=5,
        H=9,
        W=7,
        dtype=dtype,
        mask="bool",
        layout=layout if layout != "flat" else "nchw",
        flat=layout == "flat",
        seed=10,
    )
    outs = []
    for dev_, ctx in (("cpu", on("cpu")), (dev, on(kernel_device))):
        with ctx:
            x, y = a.to(dev_).requires_grad_(True), b.to(dev_).requires_grad_(True)
            loss = mona_ext.pixel_kl(x, y, m.to(dev_), symmetric=False)
            (loss * 2).backward()
        outs.append((loss.detach().cpu(), x.grad.cpu(), y.grad.cpu()))
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2 * torch.finfo(dtype).eps, atol=1e-3)
    for name, u, v in zip(["loss", "grad a", "grad b"], *outs):
        assert u.dtype == v.dtype == dtype, name
        torch.testing.assert_close(v, u, **tol, msg=lambda msg: f"{name}: {msg}")


@pytest.mark.emu
def test_emu_mismatched_device_message():
    a, b, m = make_inputs(dtype=torch.float32, mask="float")
    with on(EMU), pytest.raises(ValueError, match="pixel_kl: mask is on meta but logits_a is on cpu"):
        mona_ext.pixel_kl(a, b, m.to("meta"))
