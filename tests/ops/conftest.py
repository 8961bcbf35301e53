"""Op tests: the "emu" device row runs the whole test inside the CUDA emulation."""

from __future__ import annotations

import pytest

import emu


@pytest.fixture(autouse=True)
def _emulated_device(request):
    callspec = getattr(request.node, "callspec", None)
    device = callspec.params.get("device") if callspec is not None else None
    if getattr(device, "emulated", False):
        with emu.emulated():
            yield
    else:
        yield
