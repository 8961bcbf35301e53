"""The emulation's race detector reports planted races (csrc/emu/planted_races.cu) with the kernel,
the shared array (or global address) and the offset, whatever the schedule; each race-free twin
(with the barrier, the __syncwarp or the atomic) passes."""

from __future__ import annotations

import emu
import pytest
import torch

# The AddressSanitizer variant (scripts/test_emu_asan.sh) is built without the thread-sanitizer
# instrumentation: it race checks dynamic shared memory only.
pytestmark = [
    pytest.mark.emu,
    pytest.mark.skipif(bool(emu.sanitizer()), reason="static shared and global race checks need the plain build"),
]

SCHEDULES = ["forward", "reverse", "random:5", "interleave"]


@pytest.fixture(scope="module", autouse=True)
def _loaded():
    emu.load()


@pytest.fixture
def schedule(request):
    old = torch.ops.mona_emu.set_schedule_mode(request.param)
    yield request.param
    torch.ops.mona_emu.set_schedule_mode(old)


@pytest.fixture
def forward():
    """The exact reports below name the threads in the forward order (a race is reported whatever the
    order: see the last test); MONA_EMU_SCHEDULE may name another for the rest of the session."""
    old = torch.ops.mona_emu.set_schedule_mode("forward")
    yield
    torch.ops.mona_emu.set_schedule_mode(old)


def x_of(n: int) -> torch.Tensor:
    return torch.arange(n, dtype=torch.float32)


def race(kernel: str, array: str, hazard: str) -> str:
    # "shared memory race (HAZARD) on static __shared__ `ARRAY` (...), bytes [a, b) of its N ... [kernel KERNEL, ..."
    return (
        rf"shared memory race \({hazard}\) on static __shared__ `{array}` \(.*{kernel}.*\), bytes \[\d+, \d+\) of its"
        rf" \d+ .*this thread .* at csrc/emu/planted_races\.cu:\d+, thread \(\d+, 0, 0\) .* at "
        rf"csrc/emu/planted_races\.cu:\d+.*\[kernel {kernel}, block \(0, 0, 0\), thread \(\d+, 0, 0\)\]"
    )


def test_read_after_write_in_one_epoch_is_reported_and_the_barrier_fixes_it(forward):
    x = x_of(64)
    with pytest.raises(RuntimeError, match=race("race_raw_kernel", "raw_buf", "read after write")) as info:
        torch.ops.mona_emu.planted_race_raw(x, False)
    # thread 1 reads raw_buf[0] (bytes [0, 4)), which thread 0 wrote in the same epoch
    assert "bytes [0, 4) of its 4096" in str(info.value)
    assert "thread (0, 0, 0) wrote it" in str(info.value)
    torch.testing.assert_close(torch.ops.mona_emu.planted_race_raw(x, True), x.roll(1))


def test_write_after_read_in_one_epoch_is_reported_and_the_barrier_fixes_it(forward):
    x = x_of(64)
    with pytest.raises(RuntimeError, match=race("race_war_kernel", "war_buf", "write after read")) as info:
        torch.ops.mona_emu.planted_race_war(x, False)
    assert "bytes [4, 8) of its 4096" in str(info.value)  # thread 1 overwrites war_buf[1], read by thread 0
    torch.testing.assert_close(torch.ops.mona_emu.planted_race_war(x, True), 2 * x.roll(-1))


def test_write_after_write_is_reported_and_atomics_do_not_race(forward):
    x = x_of(64)
    with pytest.raises(RuntimeError, match=race("race_waw_kernel", "waw_total", "write after write")) as info:
        torch.ops.mona_emu.planted_race_waw(x, False)
    assert "bytes [0, 4) of its 4" in str(info.value)
    torch.testing.assert_close(torch.ops.mona_emu.planted_race_waw(x, True), torch.full((64,), x.sum().item()))


def test_warp_exchange_through_shared_memory_needs_syncwarp(forward):
    x = x_of(64)
    with pytest.raises(RuntimeError, match=race("race_warp_kernel", "warp_buf", "write after read")) as info:
        torch.ops.mona_emu.planted_race_warp(x, False)
    assert "nor __syncwarp() (the two are lanes 0 and 1 of warp 0)" in str(info.value)
    torch.testing.assert_close(torch.ops.mona_emu.planted_race_warp(x, True), x.view(-1, 2).flip(1).reshape(-1))


def test_global_double_write_by_two_blocks_is_reported_and_atomics_do_not_race(forward):
    x = x_of(64)
    with pytest.raises(
        RuntimeError,
        match=r"global memory race \(write after write\) on bytes \[0x[0-9a-f]+, \+4\) .*this thread writes it at "
        r"csrc/emu/planted_races\.cu:\d+, thread \(0, 0, 0\) of block \(0, 0, 0\) wrote it .*no barrier orders two "
        r"blocks.*\[kernel race_global_kernel, block \(1, 0, 0\), thread \(0, 0, 0\)\]",
    ):
        torch.ops.mona_emu.planted_race_global(x, False)
    torch.testing.assert_close(torch.ops.mona_emu.planted_race_global(x, True), 2 * x)


@pytest.mark.parametrize("schedule", SCHEDULES, indirect=True)
@pytest.mark.parametrize("name", ["raw", "war", "waw", "warp", "global"])
def test_every_planted_race_is_reported_under_every_schedule(name, schedule):
    op = getattr(torch.ops.mona_emu, f"planted_race_{name}")
    x = x_of(64)
    with pytest.raises(RuntimeError, match=r"(shared|global) memory race \("):
        op(x, False)
    op(x, True)  # the race-free twin passes under this schedule too


def test_a_missing_symbol_table_is_an_error_not_a_silent_skip(tmp_path):
    """Without ``nm``'s listing the templated kernels' static arrays would go unchecked: the first launch
    fails and says what to install (a fresh process: the listing is read once per process)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    fake = tmp_path / "nm"
    fake.write_text("#!/bin/sh\nexit 0\n")  # an nm that lists nothing
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    code = "import emu, torch; emu.load(); torch.ops.mona_emu.planted_race_raw(torch.arange(64.0), True)"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "with `nm` (binutils), which printed nothing; install binutils" in proc.stderr
