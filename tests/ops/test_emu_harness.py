"""The CUDA emulation reports the bugs it is for (planted in csrc/emu/planted_bugs.cu), and its
warp operations, barriers and launch checks follow CUDA's semantics."""

from __future__ import annotations

import emu
import pytest
import torch

pytestmark = pytest.mark.emu


@pytest.fixture(scope="module", autouse=True)
def _loaded():
    emu.load()


def x_of(n: int) -> torch.Tensor:
    return torch.arange(n, dtype=torch.float32)


def test_missing_barrier_is_reported_and_fixed_twin_passes():
    x = x_of(64)
    # forward / reverse: a thread reads a slot no thread wrote yet; interleave: one another thread wrote
    with pytest.raises(
        RuntimeError,
        match=r"before any thread of the block wrote them .*missing __syncthreads|shared memory race \(read after write\)",
    ):
        torch.ops.mona_emu.planted_missing_barrier(x, False)
    torch.testing.assert_close(torch.ops.mona_emu.planted_missing_barrier(x, True), x.flip(0))


def test_missing_barrier_is_reported_under_a_shuffled_schedule_too():
    # Whatever order the threads run in, a read of another thread's write with no barrier in
    # between is a race (or a read of unwritten memory).
    x = x_of(64)
    old = torch.ops.mona_emu.set_schedule(3)
    try:
        with pytest.raises(RuntimeError, match=r"shared memory race|before any thread of the block wrote"):
            torch.ops.mona_emu.planted_missing_barrier(x, False)
    finally:
        torch.ops.mona_emu.set_schedule(old)


def test_shared_out_of_bounds_is_reported_and_fixed_twin_passes():
    x = x_of(32)
    with pytest.raises(
        RuntimeError,
        match=r"out-of-bounds dynamic shared memory read: bytes \[128, 132\).*gave 128 bytes"
        r".*kernel neighbour_kernel, block \(0, 0, 0\), thread \(31, 0, 0\)",
    ):
        torch.ops.mona_emu.planted_shared_oob(x, False)
    torch.testing.assert_close(torch.ops.mona_emu.planted_shared_oob(x, True), x.roll(-1))


def test_divergent_syncthreads_is_reported_and_fixed_twin_passes():
    x = x_of(64)
    with pytest.raises(RuntimeError, match=r"divergent __syncthreads\(\).*kernel divergent_sum_kernel"):
        torch.ops.mona_emu.planted_divergent_barrier(x, False)
    torch.testing.assert_close(torch.ops.mona_emu.planted_divergent_barrier(x, True), torch.full((64,), x.sum().item()))


def test_warp_mask_naming_an_exited_lane_is_reported():
    x = x_of(32)
    with pytest.raises(RuntimeError, match=r"__shfl_xor_sync at .*mask 0xffffffff names lane|exits while lane"):
        torch.ops.mona_emu.planted_warp_exited_lane(x, False)
    torch.testing.assert_close(torch.ops.mona_emu.planted_warp_exited_lane(x, True), x.view(-1, 2).flip(1).reshape(-1))


def test_mask_naming_a_lane_that_does_not_exist_is_reported():
    # A block of 20 threads: the full mask names lanes 20..31, which do not exist.
    with pytest.raises(RuntimeError, match=r"names lane 20, which does not exist \(the block has 20 threads\)"):
        torch.ops.mona_emu.planted_warp_exited_lane(x_of(20), True)


def test_launch_configuration_limits_are_checked():
    # More than 1024 threads in a block is CUDA's "invalid configuration argument".
    with pytest.raises(ValueError, match="1 <= n <= 1024"):
        torch.ops.mona_emu.planted_missing_barrier(x_of(1025), True)


def test_every_schedule_gives_the_same_result_for_a_correct_kernel():
    x = torch.randn(256)
    ref = torch.ops.mona_emu.planted_missing_barrier(x, True)
    for seed in range(3):
        old = torch.ops.mona_emu.set_schedule(seed)
        try:
            assert torch.equal(torch.ops.mona_emu.planted_missing_barrier(x, True), ref)
        finally:
            torch.ops.mona_emu.set_schedule(old)
