"""Two-process torch.distributed (gloo, CPU) test: every rank ends with the same bank, equal to the
single-process bank fed with the concatenation of the ranks' keys in rank order. The "emu" row runs
the pushes of every rank (and of the single process) on the CUDA kernels under the CPU emulation
(gloo needs CPU tensors; a real GPU row would need one GPU per rank)."""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from op_testing import EMU, is_emulated

WORLD = 2
C, K, D = 3, 6, 4
ROWS = [pytest.param("cpu", id="cpu"), pytest.param(EMU, id="emu", marks=[pytest.mark.emu])]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_pushes(rank: int):
    """The keys rank `rank` pushes at each step (different sizes per rank, some invalid)."""
    g = torch.Generator().manual_seed(100 + rank)
    steps = []
    for step, m in enumerate([5 + 3 * rank, 2, 9 - 4 * rank, 0 if rank else 3]):
        keys = torch.randn(m, D, generator=g) + 10 * rank
        labels = torch.randint(-1, C, (m,), generator=g)
        valid = torch.rand(m, generator=g) > 0.2
        steps.append((keys, labels, valid))
    return steps


def _worker(rank: int, port: int, out_dir: str, emulated: bool = False) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        import mona_ext

        if emulated:
            import emu  # tests/ops is on the spawned process's sys.path (multiprocessing copies it)
        bank = mona_ext.ClassMemoryBank(C, K, D)
        queue = mona_ext.FeatureQueue(K, D)
        capped = mona_ext.ClassMemoryBank(C, K, D)
        g = torch.Generator().manual_seed(rank)  # different random streams per rank
        with emu.emulated() if emulated else contextlib.nullcontext():
            for keys, labels, valid in rank_pushes(rank):
                bank.push(keys, labels, valid)
                queue.push(keys)
                capped.push(keys, labels, valid, cap=1, generator=g)
        assert not emulated or emu.launched_kernels(), "no emulated kernel ran"
        torch.save(
            {"bank": bank.state_dict(), "queue": queue.state_dict(), "capped": capped.state_dict()},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
        # Both ranks finish their collectives before either leaves: a rank that destroys the group
        # while the other's gloo pair is still open aborted it ("terminate called without an active
        # exception", seen once in CI). On an exception, no barrier: the other rank would hang on it.
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("device", ROWS)
def test_two_ranks_hold_identical_banks(device):
    import mona_ext

    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_worker, args=(_free_port(), out_dir, is_emulated(device)), nprocs=WORLD, join=True)
        states = [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(WORLD)]
    for name in ("bank", "queue", "capped"):
        for key in states[0][name]:
            assert torch.equal(states[0][name][key], states[1][name][key]), (name, key)
    # single process fed with the rank-order concatenation of every step
    single, single_q = mona_ext.ClassMemoryBank(C, K, D), mona_ext.FeatureQueue(K, D)
    per_rank = [rank_pushes(r) for r in range(WORLD)]
    for step in range(len(per_rank[0])):
        keys = torch.cat([per_rank[r][step][0] for r in range(WORLD)])
        labels = torch.cat([per_rank[r][step][1] for r in range(WORLD)])
        valid = torch.cat([per_rank[r][step][2] for r in range(WORLD)])
        single.push(keys, labels, valid)
        single_q.push(keys)
    for key, value in single.state_dict().items():
        assert torch.equal(states[0]["bank"][key], value), key
    for key, value in single_q.state_dict().items():
        assert torch.equal(states[0]["queue"][key], value), key
    # both ranks' keys really arrived (rank 1's keys are offset by +10)
    filled = states[0]["bank"]["storage"][states[0]["bank"]["fill"].nonzero()[:, 0]]
    assert (filled > 5).any() and (filled.abs() < 5).any()
    assert int(states[0]["capped"]["fill"].max()) <= K
