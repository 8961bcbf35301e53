"""pixel_kl: the fused op vs the plain-PyTorch composite (two F.kl_div on log-softmaxes), forward +
backward, next to the streaming floor of the same bytes.

    python -m benchmarks.bench_pixel_kl [--device cpu|cuda] [--repeats 7] [--warmup 3] [--quick]

Writes benchmarks/results/pixel_kl_<device>.{json,md}; method: benchmarks/harness.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmarks.harness import Benchmark, Variant, main, releasing


def _inputs(device: str, B: int, C: int, H: int, masked: bool):
    g = torch.Generator().manual_seed(0)
    a = (torch.randn(B, C, H, H, generator=g) * 2).to(device).requires_grad_(True)
    b = (torch.randn(B, C, H, H, generator=g) * 2).to(device).requires_grad_(True)
    m = (torch.rand(B, H, H, generator=g) > 0.3).to(device) if masked else None
    return a, b, m


def make_ext(device: str, B: int, C: int, H: int, masked: bool):
    import mona_ext

    a, b, m = _inputs(device, B, C, H, masked)

    def run():
        a.grad = b.grad = None
        mona_ext.pixel_kl(a, b, m).backward()

    return releasing(run, a, b)


def make_composite(device: str, B: int, C: int, H: int, masked: bool):
    a, b, m = _inputs(device, B, C, H, masked)
    w = m.float() if m is not None else None

    def run():
        a.grad = b.grad = None
        la, lb = F.log_softmax(a, 1), F.log_softmax(b, 1)
        kl = F.kl_div(lb, la, reduction="none", log_target=True).sum(1) + F.kl_div(
            la, lb, reduction="none", log_target=True
        ).sum(1)
        loss = kl.mean() if w is None else (kl * w).sum() / w.sum()
        loss.backward()

    return releasing(run, a, b)


def make_floor(device: str, B: int, C: int, H: int, masked: bool):
    """What any implementation must do: read both logit maps once and write two gradients of their
    size into fresh tensors (``torch.empty_like`` + a copy of the same bytes)."""
    a, b, _ = _inputs(device, B, C, H, masked)
    a, b = a.detach(), b.detach()
    out: list[torch.Tensor] = []

    def run():
        out.clear()  # the previous call's "gradients" are freed first, as a.grad = None does
        out.append(torch.empty_like(a).copy_(a))
        out.append(torch.empty_like(b).copy_(b))

    return releasing(run, outputs=out)


BENCH = Benchmark(
    name="pixel_kl",
    doc=__doc__,
    variants=[
        Variant("ref", "benchmarks.bench_pixel_kl:make_composite", "composite"),
        Variant("ext", "benchmarks.bench_pixel_kl:make_ext", "mona"),
        Variant("floor", "benchmarks.bench_pixel_kl:make_floor", "floor"),
    ],
    baseline="ref",
    configs=[
        dict(B=12, C=4, H=256, masked=False),
        dict(B=12, C=8, H=256, masked=False),
        dict(B=12, C=4, H=256, masked=True),
        dict(B=12, C=8, H=256, masked=True),
    ],
    quick=[dict(B=2, C=4, H=32, masked=True)],
    columns=[("B", "B"), ("C", "C"), ("H", "H=W"), ("mask", "mask")],
    describe=lambda c: {"mask": "yes" if c["masked"] else "no"},
    notes=(
        "Forward + backward of the symmetric per-pixel KL, both logits requiring grad (the two input gradients, "
        "2 x B*C*H*W floats, are part of every column's memory). Composite = F.log_softmax x 2 + "
        "F.kl_div(log_target=True) x 2, sum over classes, (masked) mean. Floor = torch.empty_like + copy of both "
        "logit maps (the bytes the op must read and write). composite/X time > 1: X is faster than the composite."
    ),
)

if __name__ == "__main__":
    main(BENCH)
