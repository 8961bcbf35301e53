"""pixel_kl: the fused op vs the plain-PyTorch composite (two F.kl_div on log-softmaxes), forward + backward.

    python -m benchmarks.bench_pixel_kl [--device cpu|cuda] [--repeats 5] [--quick]

Writes benchmarks/results/pixel_kl_<device>.{json,md}.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F


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

    return run


def make_composite(device: str, B: int, C: int, H: int, masked: bool):
    a, b, m = _inputs(device, B, C, H, masked)
    w = m.float() if m is not None else None

    def run():
        a.grad = b.grad = None
        la, lb = F.log_softmax(a, 1), F.log_softmax(b, 1)
        kl = F.kl_div(lb, la, reduction="none", log_target=True).sum(1) + \
            F.kl_div(la, lb, reduction="none", log_target=True).sum(1)
        loss = kl.mean() if w is None else (kl * w).sum() / w.sum()
        loss.backward()

    return run


def main() -> None:
    from benchmarks.harness import machine_info, measure, write_results

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="one small configuration (smoke run)")
    args = ap.parse_args()
    configs = [dict(B=12, C=4, H=256, masked=False), dict(B=12, C=8, H=256, masked=False),
               dict(B=12, C=4, H=256, masked=True)]
    if args.quick:
        configs = [dict(B=2, C=4, H=32, masked=False)]
    rows = []
    for cfg in configs:
        ext = measure("benchmarks.bench_pixel_kl:make_ext", repeats=args.repeats, device=args.device, **cfg)
        ref = measure("benchmarks.bench_pixel_kl:make_composite", repeats=args.repeats, device=args.device, **cfg)
        row = {**cfg, "mask": "yes" if cfg["masked"] else "no", "ext_ms": ext["median_s"] * 1e3,
               "ref_ms": ref["median_s"] * 1e3, "speedup": ref["median_s"] / ext["median_s"],
               "ext_mb": ext["extra_peak_mb"], "ref_mb": ref["extra_peak_mb"],
               "mem_ratio": ext["extra_peak_mb"] / max(ref["extra_peak_mb"], 1e-9)}
        rows.append(row)
        print(row, flush=True)
    cols = [("B", "B"), ("C", "C"), ("H", "H=W"), ("mask", "mask"), ("ext_ms", "mona ms"),
            ("ref_ms", "composite ms"), ("speedup", "speed-up"), ("ext_mb", "mona extra MB"),
            ("ref_mb", "composite extra MB"), ("mem_ratio", "memory ratio")]
    path = write_results(f"pixel_kl_{args.device}", rows, cols, machine_info(args.device),
                         notes="Forward + backward of the symmetric per-pixel KL, both logits requiring grad "
                               "(the two input gradients, 2 x B*C*H*W floats, are part of both columns' extra "
                               "memory). Composite = F.log_softmax x 2 + F.kl_div(log_target=True) x 2, sum over "
                               "classes, (masked) mean. Median of repeats, each variant in a fresh process.")
    print(open(path).read())


if __name__ == "__main__":
    main()
