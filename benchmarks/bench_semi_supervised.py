"""Supervised-only vs GLCon + MONA on phantoms, over seeds and labeled budgets (the demo's comparison).

    python -m benchmarks.bench_semi_supervised [--seeds 0 1 2] [--labeled 1 2] [--jobs 2] [--quick]
                                               [--iterations N] [KEY=VALUE ...]

Each (seed, labeled patients) pair is one :func:`mona.demo.compare` in its own process (phantoms of
that seed, training seed = 1337 + seed, the same labeled patient(s) and the same iteration budget for
both methods, evaluation on the held-out test phantoms); ``--jobs`` of them run at once, each with
one torch thread. Reports the mean +- sd over seeds of the mean foreground Dice per method and of
the difference, and the per-seed numbers. ``KEY=VALUE`` overrides apply to both methods' configs
(e.g. ``mona.nn_weight=0`` for an ablation; give ``--name`` to keep its results apart).

Writes benchmarks/results/<name>.{json,md} (default name: semi_supervised).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _child(spec: str) -> None:
    from mona.demo import compare

    c = json.loads(spec)
    summary = compare(
        c["out"],
        iterations=c["iterations"],
        seed=c["seed"],
        train_seed=1337 + c["seed"],
        labeled_patients=c["labeled"],
        device="cpu",
        progress=False,
        overrides=c["overrides"],
        overlays=0,
        log=lambda *a: None,
    )
    print(json.dumps({k: summary[k] for k in ("supervised", "mona", "mean_dice_difference", "timings_s")}))


def _run_one(cfg: dict) -> dict:
    t0 = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_semi_supervised", "--child", json.dumps(cfg)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"comparison seed {cfg['seed']}, {cfg['labeled']} labeled failed:\n{proc.stderr[-4000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        f"  seed {cfg['seed']}, {cfg['labeled']} labeled: supervised {out['supervised']['mean_dice']:.4f}, "
        f"MONA {out['mona']['mean_dice']:.4f} ({out['mean_dice_difference']:+.4f}), {time.time() - t0:.0f} s",
        flush=True,
    )
    return {
        "seed": cfg["seed"],
        "labeled": cfg["labeled"],
        "supervised": out["supervised"]["mean_dice"],
        "mona": out["mona"]["mean_dice"],
        "difference": out["mean_dice_difference"],
        "supervised_dice": out["supervised"]["dice"],
        "mona_dice": out["mona"]["dice"],
        "wall_s": time.time() - t0,
    }


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--labeled", type=int, nargs="+", default=[1, 2], help="labeled patients (default 1 2)")
    ap.add_argument("--iterations", type=int, default=None, help="budget per method (default: the demo's, 400)")
    ap.add_argument("--jobs", type=int, default=2, help="comparisons run at once (one torch thread each)")
    ap.add_argument("--name", default="semi_supervised", help="results file name")
    ap.add_argument("--quick", action="store_true", help="one seed, 1 labeled, 8 iterations: a smoke run")
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        _child(args.child)
        return
    from benchmarks.harness import machine_info, write_results

    seeds, labeled, iterations = args.seeds, args.labeled, args.iterations
    if args.quick:
        seeds, labeled, iterations = seeds[:1], labeled[:1], 8
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="mona_bench_ssl_") as tmp:
        jobs = [
            {
                "out": str(Path(tmp) / f"s{s}_l{n}"),
                "seed": s,
                "labeled": n,
                "iterations": iterations,
                "overrides": args.overrides,
            }
            for n in labeled
            for s in seeds
        ]
        print(f"{len(jobs)} comparisons (seeds {seeds} x labeled {labeled}), {args.jobs} at a time ...", flush=True)
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            per_seed = list(pool.map(_run_one, jobs))
    rows = []
    for n in labeled:
        sel = [r for r in per_seed if r["labeled"] == n]
        sup, mona, diff = (_mean_sd([r[k] for r in sel]) for k in ("supervised", "mona", "difference"))
        rows.append(
            {
                "labeled": n,
                "seeds": len(sel),
                "supervised": f"{sup[0]:.4f} +- {sup[1]:.4f}",
                "mona": f"{mona[0]:.4f} +- {mona[1]:.4f}",
                "difference": f"{diff[0]:+.4f} +- {diff[1]:.4f}",
                "supervised_mean": sup[0],
                "supervised_sd": sup[1],
                "mona_mean": mona[0],
                "mona_sd": mona[1],
                "difference_mean": diff[0],
                "difference_sd": diff[1],
                "per_seed": [{k: r[k] for k in ("seed", "supervised", "mona", "difference")} for r in sel],
            }
        )
    meta = {
        **machine_info("cpu"),
        "torch_threads": 1,
        "jobs": args.jobs,
        "wall_s": round(time.time() - t0),
        "overrides": args.overrides,
        "iterations": iterations or "demo default (400)",
    }
    columns = [
        ("labeled", "labeled patients"),
        ("seeds", "seeds"),
        ("supervised", "supervised Dice"),
        ("mona", "GLCon + MONA Dice"),
        ("difference", "MONA - supervised"),
    ]
    per = "\n".join(
        f"- {r['labeled']} labeled, seed {r['seed']}: supervised {r['supervised']:.4f}, MONA "
        f"{r['mona']:.4f} ({r['difference']:+.4f})"
        for r in per_seed
    )
    notes = (
        f"Mean +- sd over seeds of the mean foreground Dice on the held-out test phantoms (8 volumes). "
        f"Budget {iterations or 400} iterations per method (MONA: a quarter GLCon). Overrides: "
        f"{args.overrides or 'none'}. Wall time {meta['wall_s']} s with {args.jobs} comparisons at a time.\n\n"
        f"{per}\n\n`python -m benchmarks.bench_semi_supervised " + " ".join(sys.argv[1:]) + "`"
    )
    path = write_results(args.name + ("_quick" if args.quick else ""), rows, columns, meta, notes)
    for r in rows:
        print(f"{r['labeled']} labeled: supervised {r['supervised']}, MONA {r['mona']}, difference {r['difference']}")
    print(f"-> {path} ({meta['wall_s']} s)")


if __name__ == "__main__":
    main()
