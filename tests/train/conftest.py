"""Shared fixtures for the training-package tests: tiny phantoms, a prepared cache, NIfTI writers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mona.data.prepare import prepare
from mona.data.synth import SynthConfig, write_phantoms

TINY = SynthConfig(n_train=3, n_val=1, n_test=1, seed=7, size_min=48, size_max=60, slices_min=3, slices_max=4)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory) -> Path:
    """5 phantom patients (3 train, 1 val, 1 test) in the raw ACDC layout, 48-60 px, 3-4 slices."""
    root = tmp_path_factory.mktemp("phantoms")
    write_phantoms(root, TINY, progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_cache(tiny_raw, tmp_path_factory) -> Path:
    """The tiny phantoms prepared at 32 x 32."""
    out = tmp_path_factory.mktemp("cache")
    prepare("acdc", tiny_raw, out, size=32, progress=False)
    return out
