"""Helpers shared by the op tests: device rows, dtypes and error budgets."""

from __future__ import annotations

import pytest
import torch

import mona_ext  # noqa: F401  (registers torch.ops.mona.*)

HAS_CUDA = torch.cuda.is_available()

# Every op test is table-driven over devices; the CUDA rows are skipped (not counted) without a GPU.
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")]),
]
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
