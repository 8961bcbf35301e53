"""class_mean: the fused op vs the reference (permute + index_add_), forward only and forward + backward.

    python -m benchmarks.bench_class_mean [--device cpu|cuda] [--repeats 5] [--quick]

Writes benchmarks/results/class_mean_<device>.{json,md}.
"""

from __future__ import annotations

import argparse

import torch


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

    return run


def make_reference(device: str, B: int, D: int, H: int, C: int, channels_last: bool, grad: bool = True):
    from mona_ext import reference

    f, lab = _inputs(device, B, D, H, C, channels_last, grad)

    def run():
        f.grad = None
        means, _ = reference.class_mean(f, lab, C)
        if grad:
            means.sum().backward()

    return run


def main() -> None:
    from benchmarks.harness import machine_info, measure, write_results

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="one small configuration (smoke run)")
    args = ap.parse_args()
    main = dict(B=12, D=512, H=128, C=4)
    configs = [dict(main, channels_last=False, grad=False), dict(main, channels_last=True, grad=False),
               dict(main, channels_last=False, grad=True), dict(main, channels_last=True, grad=True),
               dict(B=12, D=256, H=64, C=8, channels_last=False, grad=True)]
    if args.quick:
        configs = [dict(B=2, D=32, H=32, C=4, channels_last=False, grad=True)]
    rows = []
    for cfg in configs:
        ext = measure("benchmarks.bench_class_mean:make_ext", repeats=args.repeats, device=args.device, **cfg)
        ref = measure("benchmarks.bench_class_mean:make_reference", repeats=args.repeats, device=args.device, **cfg)
        row = {**cfg, "layout": "channels_last" if cfg["channels_last"] else "NCHW",
               "pass": "forward + backward" if cfg["grad"] else "forward (prototypes, no grad)",
               "ext_ms": ext["median_s"] * 1e3, "ref_ms": ref["median_s"] * 1e3,
               "speedup": ref["median_s"] / ext["median_s"],
               "ext_mb": ext["extra_peak_mb"], "ref_mb": ref["extra_peak_mb"]}
        rows.append(row)
        print(row, flush=True)
    cols = [("B", "B"), ("D", "D"), ("H", "H=W"), ("C", "C"), ("layout", "layout"), ("pass", "pass"),
            ("ext_ms", "mona ms"),
            ("ref_ms", "reference ms"), ("speedup", "speed-up"), ("ext_mb", "mona extra MB"),
            ("ref_mb", "reference extra MB")]
    path = write_results(f"class_mean_{args.device}", rows, cols, machine_info(args.device),
                         notes="Class means of a feature map; reference = permute + index_add_ "
                               "(mona_ext.reference.class_mean). Forward + backward includes writing the dense "
                               "gradient of the map (both variants). Median of repeats, each variant in a fresh "
                               "process.")
    print(open(path).read())


if __name__ == "__main__":
    main()
