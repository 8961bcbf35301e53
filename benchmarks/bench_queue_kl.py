"""similarity_kl and knn_loss (the queue-based relational losses): the fused ops vs the plain-PyTorch
composites (mona_ext.reference), forward + backward.

    python -m benchmarks.bench_queue_kl [--device cpu|cuda] [--repeats 7] [--warmup 3] [--quick]

Sizes: MONA's (batch B = 6..24 global embeddings, d = 512, queue of 36 entries) and ISD's (queue of
16k-128k entries, where not materialising the B x K similarity matrices and the normalised queue
copy matters). Writes benchmarks/results/queue_kl_<device>.{json,md}; method: benchmarks/harness.py.
"""

from __future__ import annotations

import torch

from benchmarks.harness import Benchmark, Variant, main, releasing


def _inputs(device: str, B: int, d: int, K: int):
    g = torch.Generator().manual_seed(0)
    student = torch.randn(B, d, generator=g).to(device).requires_grad_(True)
    teacher = torch.randn(B, d, generator=g).to(device)
    queue = torch.randn(K, d, generator=g).to(device)
    return student, teacher, queue


def _factory(loss_fn):
    def make(device: str, op: str, B: int, d: int, K: int):
        s, t, q = _inputs(device, B, d, K)
        fn = loss_fn(op)

        def run():
            s.grad = None
            fn(s, t, q).backward()

        return releasing(run, s)

    return make


def _ext(op: str):
    import mona_ext

    if op == "similarity_kl":
        return lambda s, t, q: mona_ext.similarity_kl(s, t, q, 0.1, 0.01)
    return lambda s, t, q: mona_ext.knn_loss(s, t, q, 5)


def _reference(op: str):
    from mona_ext import reference

    if op == "similarity_kl":
        return lambda s, t, q: reference.similarity_kl(s, t, q, 0.1, 0.01)
    return lambda s, t, q: reference.knn_loss(s, t, q, 5)


make_ext = _factory(_ext)
make_reference = _factory(_reference)

BENCH = Benchmark(
    name="queue_kl",
    doc=__doc__,
    variants=[
        Variant("ref", "benchmarks.bench_queue_kl:make_reference", "reference"),
        Variant("ext", "benchmarks.bench_queue_kl:make_ext", "mona"),
    ],
    baseline="ref",
    configs=[
        dict(op=op, B=B, d=512, K=K)
        for op in ("similarity_kl", "knn_loss")
        for B, K in ((6, 36), (24, 36), (12, 16384), (24, 65536), (24, 131072))
    ],
    quick=[dict(op=op, B=4, d=32, K=K) for op in ("similarity_kl", "knn_loss") for K in (36, 1024)],
    columns=[("op", "op"), ("B", "B"), ("d", "d"), ("K", "queue K")],
    notes=(
        "Forward + backward (gradient to the student embeddings). similarity_kl: KL(softmax(cos(teacher, queue) / "
        "0.01) || softmax(cos(student, queue) / 0.1)), batch mean; knn_loss: minus the mean cosine of the student "
        "to the k = 5 queue entries nearest the teacher. Reference = mona_ext.reference (normalised copies, "
        "B x K similarity matrices, F.kl_div / topk). reference/mona time > 1: the fused op is faster."
    ),
)

if __name__ == "__main__":
    main(BENCH)
