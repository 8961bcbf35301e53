"""contrast_loss: the fused op vs (a) ReCo's published algorithm and (b) a vectorised PyTorch version.

    python -m benchmarks.bench_contrast_loss [--device cpu|cuda] [--repeats 5] [--warmup 2] [--sweep] [--quick]

Forward + backward of the ACF loss (batch negatives, hard queries) with ReCo's defaults otherwise:
B = 12 images, D = 512 channels, H = W = 128, C = 4 classes, Q = 256 queries, M = 512 negatives.
Each variant runs in fresh processes (benchmarks/harness.py): steady-state median time, and the
extra peak memory above the inputs in a separate pass. `--sweep` adds D, H and C variations;
`--breakdown` times the parts of the fused loss and the memory-bound floors. Writes
benchmarks/results/contrast_loss_<device>.{json,md}.
"""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.nn.functional as F

from benchmarks.harness import Benchmark, Variant, machine_info, main, releasing, write_results

MAIN = dict(B=12, D=512, H=128, C=4, Q=256, M=512)


def _inputs(device, B, D, H, C, channels_last, seed=0):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(B, D, H, H, generator=g)
    if channels_last:
        f = f.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, C, (B, H, H), generator=g)
    prob = torch.softmax(torch.randn(B, C, H, H, generator=g), 1)
    return f.to(device).requires_grad_(True), labels.to(device), prob.to(device)


def make_fused(device, B, D, H, C, Q, M, channels_last=True):
    import mona_ext

    f, labels, prob = _inputs(device, B, D, H, C, channels_last)
    gen = torch.Generator(device).manual_seed(0)

    def run():
        f.grad = None
        loss = mona_ext.contrast_loss(f, labels, C, prob=prob, num_queries=Q, num_negatives=M, generator=gen)
        loss.backward()

    return releasing(run, f)


def make_vectorised(device, B, D, H, C, Q, M, channels_last=True):
    from mona_ext import reference

    f, labels, prob = _inputs(device, B, D, H, C, channels_last)
    gen = torch.Generator(device).manual_seed(0)

    def run():
        f.grad = None
        loss = reference.contrast_loss_vectorised(
            f, labels, C, prob=prob, num_queries=Q, num_negatives=M, generator=gen
        )
        loss.backward()

    return releasing(run, f)


def make_published(device, B, D, H, C, Q, M, channels_last=True):
    from mona_ext import reference

    f, labels, prob = _inputs(device, B, D, H, C, channels_last)
    onehot = F.one_hot(labels, C).permute(0, 3, 1, 2).float()
    mask = torch.ones(B, 1, H, H, device=device)

    def run():
        f.grad = None
        loss = reference.reco_loss_published(
            f, onehot, mask, prob, strong_threshold=0.97, num_queries=Q, num_negatives=M
        )
        loss.backward()

    return releasing(run, f)


def breakdown(device: str, repeats: int, B=12, D=512, H=128, C=4, Q=256, M=512) -> list[dict]:
    """Median time of each part of the fused loss, and of the two memory-bound floors: one
    streaming read of the map and allocating + zeroing its dense gradient (in this process)."""
    import statistics
    import time

    import mona_ext

    f, labels, prob = _inputs(device, B, D, H, C, True)
    f = f.detach()
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def timed(fn):
        fn()
        times = []
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            out = fn()
            sync()
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1e3, out

    rows = []
    ms, _ = timed(lambda: f.sum())
    rows.append({"part": "floor: one streaming read of the map (f.sum())", "ms": ms})
    ms, _ = timed(lambda: torch.zeros_like(f))
    rows.append({"part": "floor: allocate + zero the dense gradient (torch.zeros_like)", "ms": ms})
    ms, pools = timed(lambda: mona_ext.class_pools(labels, C, prob=prob, strong_threshold=0.97))
    rows.append({"part": "class_pools", "ms": ms})
    ms, (protos, _) = timed(lambda: mona_ext.class_mean(f, labels, C))
    rows.append({"part": "class_mean (prototypes)", "ms": ms})
    gen = torch.Generator(device).manual_seed(0)
    ms, (q, n, w) = timed(lambda: mona_ext.sample_negatives(*pools, protos, Q, M, generator=gen))
    rows.append({"part": "sample_negatives", "ms": ms})
    ms, _ = timed(lambda: torch.ops.mona.contrast_infonce(f, f, protos, q, n, w, 0.5, None, False))
    rows.append({"part": "contrast_infonce forward, loss only", "ms": ms})
    ms, (_, grad_rows) = timed(lambda: torch.ops.mona.contrast_infonce(f, f, protos, q, n, w, 0.5, None, True))
    rows.append({"part": "contrast_infonce forward, loss + query gradients", "ms": ms})
    one = torch.ones((), device=device)
    ms, _ = timed(lambda: torch.ops.mona.contrast_infonce_backward(one, f, q, w, grad_rows))
    rows.append({"part": "contrast_infonce backward (dense gradient + scatter)", "ms": ms})
    return rows


EXTRA_COLUMNS = [
    ("grad_mb", "of which dense grad MB"),
    ("fused_beyond_grad_mb", "fused MB beyond grad"),
    ("vec_beyond_grad_mb", "(b) MB beyond grad"),
]
NOTES = (
    "Forward + backward, Q = 256 queries, M = 512 negatives (ReCo published: one timed call after one warm-up, "
    "it is slow). MB = peak above the inputs, including the dense gradient of the feature map that autograd "
    "returns for every variant; 'beyond grad' subtracts it. X/fused time > 1: the fused op is faster."
)


def floor_estimate(B, D, H, C, Q, M, bytes_per=4):
    """Bytes that any implementation must move: one read of the map (prototypes) + the gathered
    query/key vectors, forward and backward, + writing the dense gradient."""
    map_bytes = B * D * H * H * bytes_per
    gathered = C * Q * (M + 2) * D * bytes_per
    return {
        "map_mb": map_bytes / 2**20,
        "gathered_mb": gathered / 2**20,
        "total_mb": (map_bytes + 2 * gathered + map_bytes) / 2**20,
    }


def derive(row: dict) -> dict:
    """The columns beyond the measurements: the dense gradient every variant returns, each variant's
    memory beyond it, and the floor estimate."""
    grad_mb = row["B"] * row["D"] * row["H"] ** 2 * 4 / 2**20  # the dense gradient every variant returns
    out = {
        "grad_mb": grad_mb,
        "fused_beyond_grad_mb": max(0.0, row["fused_mb"] - grad_mb),
        "vec_beyond_grad_mb": max(0.0, row["vec_mb"] - grad_mb),
    }
    floor = floor_estimate(row["B"], row["D"], row["H"], row["C"], row["Q"], row["M"])
    out.update({f"floor_{k}": v for k, v in floor.items()})
    return out


SWEEP = [
    dict(MAIN, D=256, H=64, channels_last=True),
    dict(MAIN, D=512, H=64, channels_last=True),
    dict(MAIN, C=8, channels_last=True),
]


def configure(bench: Benchmark, args) -> Benchmark | None:
    """The options: --breakdown (another table, written here), --sweep, --skip-published, --tag; the
    THP_* / OMP_* / MKL_* environment is recorded with the results."""
    if args.breakdown:
        rows = breakdown(args.device, args.repeats)
        path = write_results(
            f"contrast_loss_breakdown_{args.device}",
            rows,
            [("part", "part"), ("ms", "ms")],
            machine_info(args.device),
            notes="B = 12, D = 512, 128 x 128, C = 4, Q = 256, M = 512, channels-last, float32; "
            "one warm-up, then the median of repeats in one process.",
        )
        print(path.read_text())
        return None
    variants = [v for v in bench.variants if not (args.skip_published and v.label == "pub")]
    env = {k: v for k, v in os.environ.items() if k.startswith(("THP_", "OMP_", "MKL_"))}
    return dataclasses.replace(
        bench,
        variants=variants,
        configs=bench.configs + (SWEEP if args.sweep else []),
        ratios=[(v.label, "fused") for v in variants[1:]],
        name_suffix=f"_{args.tag}" if args.tag else "",
        meta_extra={"env": env} if env else None,
    )


BENCH = Benchmark(
    name="contrast_loss",
    doc=__doc__,
    variants=[
        Variant("fused", "benchmarks.bench_contrast_loss:make_fused", "fused"),
        Variant("vec", "benchmarks.bench_contrast_loss:make_vectorised", "(b) vectorised"),
        Variant("pub", "benchmarks.bench_contrast_loss:make_published", "(a) ReCo published", repeats=1),
    ],
    baseline="fused",
    configs=[dict(MAIN, channels_last=True), dict(MAIN, channels_last=False)],
    quick=[dict(B=2, D=32, H=32, C=4, Q=32, M=64, channels_last=True)],
    columns=[("B", "B"), ("D", "D"), ("H", "H=W"), ("C", "C"), ("layout", "layout")],
    describe=lambda c: {"layout": "channels_last" if c["channels_last"] else "NCHW"},
    derive=derive,
    extra_columns=EXTRA_COLUMNS,
    notes=NOTES,
    default_repeats=5,
    default_warmup=2,
    options=[
        (("--sweep",), dict(action="store_true", help="also vary D, H and C")),
        (("--skip-published",), dict(action="store_true", help="leave out (a), ReCo's published algorithm")),
        (("--breakdown",), dict(action="store_true", help="time the parts of the fused loss at the main size")),
        (
            ("--tag",),
            dict(default="", help="suffix of the result files, e.g. 'thp' for a run with THP_MEM_ALLOC_ENABLE=1"),
        ),
    ],
    configure=configure,
)

if __name__ == "__main__":
    main(BENCH)
