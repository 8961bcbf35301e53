"""torch.ops.mona.contrast_infonce (the fused InfoNCE over sampled indices) against
mona_ext.reference.contrast_infonce."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from op_testing import DEVICES, EMU, KERNEL_DEVICES, device_of, on, sampled, scene

import mona_ext
from mona_ext import reference


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
    qidx, nidx, w = mona_ext.sample_negatives(
        *mona_ext.class_pools(lab, C),
        protos,
        Q,
        M,
        negatives="both",
        bank_fill=torch.tensor([5, 2, 4]),
        bank_size=5,
        generator=torch.Generator().manual_seed(0),
    )
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
def test_infonce_backward_opcheck(device):
    f, keys, protos, qidx, nidx, w, bank_t = sampled(device=device, bank=True)
    _, rows = torch.ops.mona.contrast_infonce(f, keys, protos, qidx, nidx, w, 0.5, bank_t, True)
    torch.library.opcheck(
        torch.ops.mona.contrast_infonce_backward.default,
        (torch.tensor(0.7, dtype=f.dtype, device=device), f, qidx, w, rows),
    )


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
        (
            lambda a: a.update(query_index=a["query_index"][:, :0], negative_index=a["negative_index"][:, :0]),
            "num_queries must be positive",
        ),
        (lambda a: a.update(negative_index=a["negative_index"][:2]), r"negative_index must be int64 \[C, Q, M\]"),
        (lambda a: a.update(bank=torch.zeros(3, 4, 5, dtype=torch.float64)), r"bank must be \[C, K, D\]"),
        (lambda a: a.update(features=a["features"].float()), "key_features dtype"),
    ],
)
def test_infonce_errors(change, message):
    f, keys, protos, qidx, nidx, w, _ = sampled()
    args = dict(
        features=f,
        key_features=keys,
        prototypes=protos,
        query_index=qidx,
        negative_index=nidx,
        class_weight=w,
        temperature=0.5,
        bank=None,
    )
    change(args)
    with pytest.raises((ValueError, TypeError), match=message):
        mona_ext.contrast_infonce(**args)


@settings(max_examples=25, deadline=None)
@given(
    temperature=st.sampled_from([1e-3, 0.05, 0.5, 1e3]),
    D=st.integers(1, 9),
    seed=st.integers(0, 1000),
    scale=st.sampled_from([0.0, 1e-6, 1.0, 1e4]),
)
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
            loss = mona_ext.contrast_infonce(
                x,
                keys.to(dev_),
                protos.to(dev_),
                qidx.to(dev_),
                nidx.to(dev_),
                w.to(dev_),
                0.5,
                bank=bank_t.to(dev_) if bank_t is not None else None,
            )
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
def test_emu_mismatched_device_message():
    f, keys, protos, qidx, nidx, w, bank_t = sampled(bank=True)
    with on(EMU):
        with pytest.raises(ValueError, match="contrast_infonce: bank is on meta but features is on cpu"):
            mona_ext.contrast_infonce(f, keys, protos, qidx, nidx, w, 0.5, bank=bank_t.to("meta"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("bank", [False, True])
def test_query_rows_with_a_key_map_match_the_map(device, channels_last, bank):
    """features = the query rows [Nq, D] (query_index into them) with a [B, D, H, W] key map: the
    loss and the rows' gradient of the map case, on every kernel (contrast_loss_at_queries' path)."""
    dev = str(device)  # EMU is "cpu" with the emulation entered by tests/conftest.py
    f, keys, protos, qidx, nidx, w, bank_t = sampled(dtype=torch.float64, Q=6, M=9, seed=3, bank=bank)
    if channels_last:
        f, keys = (t.contiguous(memory_format=torch.channels_last) for t in (f, keys))
    D = f.shape[1]
    pixels, rows_of = torch.unique(qidx.clamp_min(0), return_inverse=True)
    rows_of = torch.where(qidx < 0, qidx, rows_of)  # an absent class keeps its -1
    x_map = f.detach().to(dev).requires_grad_(True)
    l_map = mona_ext.contrast_infonce(
        x_map, keys.to(dev), protos.to(dev), qidx.to(dev), nidx.to(dev), w.to(dev), 0.5,
        bank_t.to(dev) if bank_t is not None else None,
    )  # fmt: skip
    rows = f.detach().permute(0, 2, 3, 1).reshape(-1, D)[pixels].to(dev).requires_grad_(True)
    l_rows = mona_ext.contrast_infonce(
        rows, keys.to(dev), protos.to(dev), rows_of.to(dev), nidx.to(dev), w.to(dev), 0.5,
        bank_t.to(dev) if bank_t is not None else None,
    )  # fmt: skip
    torch.testing.assert_close(l_rows, l_map, rtol=1e-12, atol=1e-12)
    l_map.backward()
    l_rows.backward()
    expected = x_map.grad.cpu().permute(0, 2, 3, 1).reshape(-1, D)[pixels]
    torch.testing.assert_close(rows.grad.cpu(), expected, rtol=1e-10, atol=1e-12)
    assert rows.grad.abs().sum() > 0
