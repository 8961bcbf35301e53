"""class_mean: the fused op vs the reference (permute + index_add_), forward only and forward + backward.

    python -m benchmarks.bench_class_mean [--device cpu|cuda] [--repeats 7] [--warmup 3] [--quick]

Writes benchmarks/results/class_mean_<device>.{json,md}; method: benchmarks/harness.py.
"""

from __future__ import annotations

import torch

from benchmarks.harness import Benchmark, Variant, main, releasing


def _inputs(device: str, B: int, D: int, H: int, C: int, channels_last: bool, grad: bool = True):
    g = torch.Generator().manual_seed(0)
    f = torch.randn(B, D, H, H, generator=g).to(device)
    if channels_last:
        f = f.contiguous(memory_format=torch.channels_last)
    lab = torch.randint(-1, C, (B, H, H), generator=g).to(device)
    return f.requires_grad_(grad), lab


def make_ext(device: str, B: int, D: int, H: int, C: int, channels_last: bool, grad: bool = True):
    import mona_ext

    f, lab = _inputs(device, B, D, H, C, channels_last, grad)

    def run():
        f.grad = None
        means, _ = mona_ext.class_mean(f, lab, C)
        if grad:
            means.sum().backward()

    return releasing(run, f)


def make_reference(device: str, B: int, D: int, H: int, C: int, channels_last: bool, grad: bool = True):
    from mona_ext import reference

    f, lab = _inputs(device, B, D, H, C, channels_last, grad)

    def run():
        f.grad = None
        means, _ = reference.class_mean(f, lab, C)
        if grad:
            means.sum().backward()

    return releasing(run, f)


MAIN = dict(B=12, D=512, H=128, C=4)

BENCH = Benchmark(
    name="class_mean",
    doc=__doc__,
    variants=[
        Variant("ref", "benchmarks.bench_class_mean:make_reference", "reference"),
        Variant("ext", "benchmarks.bench_class_mean:make_ext", "mona"),
    ],
    baseline="ref",
    configs=[
        dict(MAIN, channels_last=False, grad=False),
        dict(MAIN, channels_last=True, grad=False),
        dict(MAIN, channels_last=False, grad=True),
        dict(MAIN, channels_last=True, grad=True),
        dict(B=12, D=256, H=64, C=8, channels_last=False, grad=True),
    ],
    quick=[dict(B=2, D=32, H=32, C=4, channels_last=False, grad=True)],
    columns=[("B", "B"), ("D", "D"), ("H", "H=W"), ("C", "C"), ("layout", "layout"), ("pass", "pass")],
    describe=lambda c: {
        "layout": "channels_last" if c["channels_last"] else "NCHW",
        "pass": "forward + backward" if c["grad"] else "forward (no grad)",
    },
    notes=(
        "Class means of a feature map; reference = permute + index_add_ (mona_ext.reference.class_mean). "
        "Forward + backward includes writing the dense gradient of the map (both variants). "
        "reference/mona time > 1: the fused op is faster."
    ),
)

if __name__ == "__main__":
    main(BENCH)
