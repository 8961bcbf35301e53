"""Helpers shared by the op tests: device rows, dtypes and error budgets."""

from __future__ import annotations

import contextlib

import pytest
import torch

import emu
import mona_ext  # noqa: F401  (registers torch.ops.mona.*)

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


def low_precision_tolerance(dtype: torch.dtype) -> float:
    """Machine epsilon of a dtype (the unit of the flash-attention style error budget)."""
    return torch.finfo(dtype).eps


def assert_within_twice_torch_error(ours: torch.Tensor, torch_same_dtype: torch.Tensor, reference64: torch.Tensor,
                                    floor: float = 0.0) -> None:
    """flash-attention style check: our error against the float64 reference may be at most twice
    the error plain PyTorch makes in the same (low) precision, plus a tiny floor for exact cases."""
    ours_err = (ours.double() - reference64).abs().max().item()
    torch_err = (torch_same_dtype.double() - reference64).abs().max().item()
    assert ours_err <= 2 * torch_err + floor, f"error {ours_err:.3g} > 2 x torch's {torch_err:.3g} (+{floor:.1g})"
