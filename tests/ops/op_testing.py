"""Helpers shared by the op tests: device rows, dtypes and error budgets."""

from __future__ import annotations

import contextlib

import pytest
import torch

import emu
import mona_ext  # registers torch.ops.mona.*

HAS_CUDA = torch.cuda.is_available()


class EmulatedDevice(str):
    """The "emu" row: tensors live on the CPU ("cpu"), and the test runs inside emu.emulated(), so
    every mona op runs its CUDA kernel under the CPU emulation of the CUDA execution model."""

    emulated = True


EMU = EmulatedDevice("cpu")
_CUDA_ROW = pytest.param("cuda", id="cuda", marks=[pytest.mark.cuda,
                                                   pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")])
_EMU_ROW = pytest.param(EMU, id="emu", marks=[pytest.mark.emu])

# Every op test is table-driven over devices: the CPU kernels, the CUDA kernels on a GPU (skipped,
# not counted, without one) and the same CUDA kernels under the emulation (tests/conftest.py enters
# it for a test whose `device` is EMU).
DEVICES = [pytest.param("cpu", id="cpu"), _CUDA_ROW, _EMU_ROW]
# Rows for tests that compare a device's kernels with the CPU kernels in one test (argument name
# `kernel_device`): run the device side inside `on(kernel_device)`.
KERNEL_DEVICES = [_CUDA_ROW, _EMU_ROW]


def is_emulated(device) -> bool:
    return getattr(device, "emulated", False)


def on(device):
    """Context in which mona ops run the kernels of `device` (the emulation for EMU)."""
    return emu.emulated() if is_emulated(device) else contextlib.nullcontext()


def device_of(kernel_device) -> str:
    """Where the tensors of a `kernel_device` row live: the CPU under the emulation, else the GPU."""
    return "cpu" if is_emulated(kernel_device) else "cuda"


FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def assert_within_twice_torch_error(ours: torch.Tensor, torch_same_dtype: torch.Tensor, reference64: torch.Tensor,
                                    floor: float = 0.0) -> None:
    """flash-attention style check: our error against the float64 reference may be at most twice
    the error plain PyTorch makes in the same (low) precision, plus a tiny floor for exact cases."""
    ours_err = (ours.double() - reference64).abs().max().item()
    torch_err = (torch_same_dtype.double() - reference64).abs().max().item()
    assert ours_err <= 2 * torch_err + floor, f"error {ours_err:.3g} > 2 x torch's {torch_err:.3g} (+{floor:.1g})"


# ---------------------------------------------------------------------------------------------- contrast inputs
# Shared by test_class_pools.py, test_sample_negatives.py, test_contrast_infonce.py and the op-case table.

def scene(B=2, D=8, H=6, W=7, C=3, device="cpu", dtype=torch.float64, seed=0, ignore_frac=0.1, channels_last=False):
    """A contrast batch: features [B, D, H, W], labels [B, H, W] (ignore_frac of them -1) and
    class probabilities [B, C, H, W] (float64)."""
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(B, D, H, W, generator=g, dtype=torch.float64)
    lab = torch.randint(0, C, (B, H, W), generator=g)
    lab[torch.rand(B, H, W, generator=g) < ignore_frac] = -1
    prob = torch.softmax(torch.randn(B, C, H, W, generator=g, dtype=torch.float64) * 3, 1)
    f = f.to(device=device, dtype=dtype)
    if channels_last:
        f = f.contiguous(memory_format=torch.channels_last)
    return f, lab.to(device), prob.to(device)


def pools_and_protos(lab, C, D=8, prob=None, threshold=1.0, seed=0):
    """class_pools of `lab` and random prototypes [C, D] (float64): the inputs of sample_negatives."""
    protos = torch.randn(C, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(lab.device)
    return mona_ext.class_pools(lab, C, prob=prob, strong_threshold=threshold), protos


def sampled(device="cpu", dtype=torch.float64, C=3, Q=5, M=7, channels_last=False, seed=0, bank=False):
    """The inputs of contrast_infonce, sampled by the mona ops: (features, key_features, prototypes,
    query_index, negative_index, class_weight, bank or None)."""
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
