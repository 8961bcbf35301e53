"""Class-aware bank push: the in-place ring buffer (mona.bank_push) vs the public code's
concat-and-truncate (per class ``torch.cat([new, old])[:K]``, a new tensor every push).

    python -m benchmarks.bench_bank [--device cpu|cuda] [--repeats 7] [--warmup 3] [--quick]

One table in benchmarks/results/bank_<device>.{json,md}: time per push + extra peak memory of one
push of M keys (1k-100k), and of 1000 consecutive pushes (does memory stay flat?). Method:
benchmarks/harness.py.
"""

from __future__ import annotations

import torch

from benchmarks.harness import Benchmark, Variant, main

C, K, D = 4, 20000, 128


def _keys(device: str, M: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(M, D, generator=g).to(device), torch.randint(-1, C, (M,), generator=g).to(device)


def make_ext(device: str, M: int, pushes: int):
    from mona_ext import ClassMemoryBank

    bank = ClassMemoryBank(C, K, D, device=device)
    keys, labels = _keys(device, M)
    bank.push(keys, labels)  # the bank is allocated and warm before measuring
    address = bank.storage.data_ptr()

    def run():
        for _ in range(pushes):
            bank.push(keys, labels)
        assert bank.storage.data_ptr() == address  # never reallocated

    return run


def make_concat(device: str, M: int, pushes: int):
    from mona_ext.reference import concat_truncate_push

    state = {"storage": [torch.zeros(0, D, device=device) for _ in range(C)]}
    keys, labels = _keys(device, M)
    state["storage"] = concat_truncate_push(state["storage"], keys, labels, K)

    def run():
        for _ in range(pushes):
            state["storage"] = concat_truncate_push(state["storage"], keys, labels, K)

    return run


BENCH = Benchmark(
    name="bank",
    doc=__doc__,
    variants=[
        Variant("ref", "benchmarks.bench_bank:make_concat", "concat+truncate"),
        Variant("ext", "benchmarks.bench_bank:make_ext", "mona"),
    ],
    baseline="ref",
    configs=[dict(M=1000, pushes=1), dict(M=10000, pushes=1), dict(M=100000, pushes=1), dict(M=1000, pushes=1000)],
    quick=[dict(M=1000, pushes=1), dict(M=1000, pushes=20)],
    columns=[("M", "keys per push"), ("pushes", "pushes")],
    per=lambda c: c["pushes"],  # ms per push
    repeats=lambda c: None if c["pushes"] == 1 else 1,  # one timed call of many pushes
    notes=(
        f"Bank of C={C} classes x K={K} slots x D={D} float32 (41 MB), already full. Labels uniform over C classes "
        "+ ignore. ms per push; MB = peak above the resident memory before the call's pushes (the bank itself "
        "excluded): over 1000 pushes mona's stays flat (the storage is never reallocated: asserted), "
        "concat+truncate allocates a new bank per push. concat/mona time > 1: the ring buffer is faster."
    ),
)

if __name__ == "__main__":
    main(BENCH)
