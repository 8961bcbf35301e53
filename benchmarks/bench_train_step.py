"""One MONA stage-2 training step, ``impl: ext`` (fused ops) vs ``impl: reference`` (plain PyTorch).

    python -m benchmarks.bench_train_step [--device cpu|cuda] [--repeats 5] [--warmup 2] [--quick]

The step is the real one (``mona.train.loop.train_one_iteration`` of the packaged ``acdc_mona``
config: batch 6 = 3 labeled + 3 unlabeled slices at 256 x 256, 512-d embeddings at full resolution,
256 queries x 512 negatives, every loss term on), on phantom slices prepared at 256 x 256 in a
temporary cache. Each (impl, pass) runs in a fresh process:

* time pass: the allocator's defaults (nothing in the environment changed); ``--warmup`` steps, then
  the median of ``--repeats`` steps, each timed on its own (CUDA: synchronised);
* memory pass (another process): one warm-up step, then the peak of one step above the memory
  resident before it -- CPU: the process's peak RSS (VmHWM reset via /proc/self/clear_refs; large
  blocks forced to mmap so that RSS follows live memory); CUDA: ``max_memory_allocated``.

Writes benchmarks/results/train_step_<device>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _make_cache(root: Path, size: int) -> Path:
    from mona.data.prepare import prepare
    from mona.data.synth import SynthConfig, write_phantoms

    write_phantoms(root / "raw", SynthConfig(n_train=4, n_val=0, n_test=1, seed=0), progress=False)
    prepare("acdc", root / "raw", root / "cache", size=size, progress=False)
    return root / "cache"


# Overrides of acdc_mona.yaml for a run whose steps are training steps alone: stage 2 only, one
# labeled patient, and never a log line, validation or checkpoint in the measured steps
# (memory_model.py uses them too).
STEP_ONLY = [
    "pretrain_iterations=0",
    "iterations=100000",
    "val_every=100000",
    "checkpoint_every=100000",
    "log_every=100000",
    "data.labeled_patients=1",
    "data.labeled_ratio=null",
]


def _child(cfg_json: str) -> None:
    import torch

    from mona.train import load_config
    from mona.train.loop import setup, train_one_iteration

    c = json.loads(cfg_json)
    if c.get("threads"):
        torch.set_num_threads(c["threads"])
    cuda = c["device"].startswith("cuda")
    cfg = load_config(
        str(ROOT / f"python/mona/configs/{c.get('config', 'acdc_mona')}.yaml"),
        [
            f"data.cache={c['cache']}",
            f"out_dir={c['out']}",
            f"device={c['device']}",
            f"impl={c['impl']}",
            *STEP_ONLY,
            *c["overrides"],
        ],
    )
    run = setup(cfg)
    run.method.student.train()

    def sync():
        if cuda:
            torch.cuda.synchronize()

    if c["pass"] == "breakdown":
        print(json.dumps(_breakdown_child(run, c, cuda)))
        return
    if c["pass"] == "time":
        for _ in range(c["warmup"]):
            train_one_iteration(run)
        times = []
        for _ in range(c["repeats"]):
            sync()
            t0 = time.perf_counter()
            train_one_iteration(run)
            sync()
            times.append(time.perf_counter() - t0)
        print(json.dumps({"times_s": times, "median_s": statistics.median(times)}))
        return
    train_one_iteration(run)  # warm-up: optimiser state, bank and queue exist, caches built
    import gc

    from benchmarks.harness import peak_of

    gc.collect()
    base, peak = peak_of(lambda: train_one_iteration(run), cuda)
    print(json.dumps({"extra_peak_mb": max(0, peak - base) / 2**20, "base_mb": base / 2**20}))


def _breakdown_child(run, c: dict, cuda: bool) -> dict:
    """``--breakdown`` in the child: warm-up steps, then ``repeats`` steps under a
    :class:`mona.train.profile.StepProfile` (regions: wall time, exclusive of their children), then
    one step under ``torch.profiler`` (operators' self CPU time by category)."""
    import torch

    from mona.train.loop import train_one_iteration
    from mona.train.profile import StepProfile, exclusive, op_categories

    for _ in range(c["warmup"]):
        train_one_iteration(run)
    prof = StepProfile(cuda=cuda)
    with prof:
        for _ in range(c["repeats"]):
            with prof.step():
                train_one_iteration(run)
    regions = exclusive(prof.per_step())
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as tp:
        t0 = time.perf_counter()
        train_one_iteration(run)
        profiled_s = time.perf_counter() - t0
    ops = op_categories(tp.key_averages())
    return {"step_s": prof.per_step()["step"], "regions": regions, "ops": ops, "profiled_step_s": profiled_s}


#: --breakdown: (scale, method, packaged config, overrides, image size). Demo scale = the packaged demo
#: configs (96 x 96, 64-d, 1 thread, the settings `mona demo` trains with); paper scale = the packaged
#: ACDC configs (256 x 256, 512-d at full resolution).
BREAKDOWN_RUNS = [
    ("demo", "supervised", "demo", ["method=supervised"], 96),
    ("demo", "supervised_strong", "demo", ["method=supervised_strong"], 96),
    ("demo", "mean_teacher", "demo_mona", ["method=mean_teacher"], 96),
    ("demo", "glcon", "demo_mona", ["method=glcon"], 96),
    ("demo", "mona", "demo_mona", [], 96),
    ("demo", "unimatch", "demo_mona", ["method=unimatch"], 96),
    ("demo", "bcp", "demo_mona", ["method=bcp"], 96),
    ("paper", "supervised", "acdc_supervised", [], 256),
    ("paper", "glcon", "acdc_glcon", [], 256),
    ("paper", "mona", "acdc_mona", [], 256),
]


def breakdown(args, tmp: Path) -> tuple[list[dict], list[dict]]:
    """Region and operator tables of one step of each method of :data:`BREAKDOWN_RUNS`."""
    caches: dict[int, Path] = {}
    region_rows, op_rows = [], []
    runs = [r for r in BREAKDOWN_RUNS if args.scale in ("both", r[0]) and (not args.methods or r[1] in args.methods)]
    for i, (scale, method, config, overrides, size) in enumerate(runs):
        if size not in caches:
            print(f"preparing phantom slices at {size} x {size} ...", flush=True)
            caches[size] = _make_cache(tmp / f"data{size}", size)
        print(
            f"[{i + 1}/{len(runs)}] {scale} scale, {method}: {args.warmup} warm-up + {args.repeats} profiled steps ...",
            flush=True,
        )
        cfg = {
            "cache": str(caches[size]),
            "out": str(tmp / f"run_{scale}_{method}"),
            "device": args.device,
            "impl": "ext",
            "config": config,
            "threads": args.threads,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "overrides": [*overrides, *args.overrides],
            "pass": "breakdown",
        }
        r = _spawn(cfg, memory=False)
        step = r["step_s"]
        for name, t in sorted(r["regions"].items(), key=lambda kv: -kv[1]):
            if t < 0.01 * step and name != "step":
                continue
            region = (
                "(the loop outside the marked parts)"
                if name == "step"
                else name.removeprefix("step/").replace("/", " / ")
            )
            region_rows.append(
                {
                    "scale": scale,
                    "method": method,
                    "step_ms": step * 1e3,
                    "region": region,
                    "ms": t * 1e3,
                    "pct": 100 * t / step,
                }
            )
        ops_total = sum(r["ops"].values())
        python = max(0.0, r["profiled_step_s"] - ops_total)
        for name, t in sorted(
            [*r["ops"].items(), ("Python, dispatch and profiler overhead (step - operators)", python)],
            key=lambda kv: -kv[1],
        ):
            op_rows.append(
                {
                    "scale": scale,
                    "method": method,
                    "category": name,
                    "ms": t * 1e3,
                    "pct": 100 * t / r["profiled_step_s"],
                }
            )
        print(f"  {step * 1e3:.0f} ms/step", flush=True)
    return region_rows, op_rows


def _spawn(cfg: dict, memory: bool) -> dict:
    from benchmarks.harness import MEMORY_PASS_ENV

    env = dict(os.environ)
    if memory and not cfg["device"].startswith("cuda"):
        env.update(MEMORY_PASS_ENV)  # memory pass only: RSS follows live memory
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_train_step", "--child", json.dumps(cfg)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"train step {cfg['impl']} ({cfg['pass']} pass) failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    from benchmarks.harness import machine_info, write_results

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--quick", action="store_true", help="64 x 64, 32-d, few queries: a smoke run")
    ap.add_argument(
        "--breakdown",
        action="store_true",
        help="where one step's time goes, per method: marked regions and operator categories",
    )
    ap.add_argument("--scale", choices=("demo", "paper", "both"), default="both", help="--breakdown: which scale")
    ap.add_argument("--methods", nargs="*", default=None, help="--breakdown: only these methods")
    ap.add_argument("--tag", default="", help="suffix of the result files (e.g. for a run with overrides)")
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for every run")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        _child(args.child)
        return
    if args.breakdown:
        _main_breakdown(args)
        return
    size = 64 if args.quick else 256
    overrides = (
        ["model.embed_dim=32", "mona.num_queries=16", "mona.num_negatives=32", "mona.bank_size=64"]
        if args.quick
        else []
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="mona_bench_step_") as tmp:
        print(f"preparing phantom slices at {size} x {size} ...", flush=True)
        cache = _make_cache(Path(tmp), size)
        for impl in ("ext", "reference"):
            base = {
                "cache": str(cache),
                "out": str(Path(tmp) / f"run_{impl}"),
                "device": args.device,
                "impl": impl,
                "threads": args.threads,
                "warmup": args.warmup,
                "repeats": args.repeats,
                "overrides": [*overrides, *args.overrides],
            }
            print(f"{impl}: time pass ({args.warmup} warm-up + {args.repeats} steps) ...", flush=True)
            t = _spawn({**base, "pass": "time"}, memory=False)
            print(f"{impl}: memory pass ...", flush=True)
            m = _spawn({**base, "pass": "memory"}, memory=True)
            rows.append(
                {
                    "impl": impl,
                    "size": size,
                    "median_s": t["median_s"],
                    "times_s": t["times_s"],
                    "extra_peak_mb": m["extra_peak_mb"],
                }
            )
            print(f"  {impl}: {t['median_s']:.3f} s/step (median), +{m['extra_peak_mb']:.0f} MB peak", flush=True)
    ext, ref = rows
    for r in rows:
        r["time_vs_reference"] = r["median_s"] / ref["median_s"]
        r["memory_vs_reference"] = r["extra_peak_mb"] / max(ref["extra_peak_mb"], 1e-9)
    meta = machine_info(args.device)
    columns = [
        ("impl", "impl"),
        ("size", "H=W"),
        ("median_s", "step s (median)"),
        ("extra_peak_mb", "extra peak MB"),
        ("time_vs_reference", "time / reference"),
        ("memory_vs_reference", "memory / reference"),
    ]
    notes = (
        "One stage-2 step of the packaged acdc_mona config (batch 3 + 3, 512-d at full resolution, all five "
        "loss terms) on phantom slices; time: allocator defaults, warm-up then the median; memory: its own "
        "process, peak above the resident memory before the step. `python -m benchmarks.bench_train_step"
        + (" --quick" if args.quick else "")
        + f" --device {args.device}"
        + (f" --tag {args.tag}" if args.tag else "")
        + "".join(f" {o}" for o in args.overrides)
        + "`."
    )
    path = write_results(
        f"train_step_{args.device}" + ("_quick" if args.quick else "") + args.tag, rows, columns, meta, notes
    )
    print(
        f"\next vs reference: {ext['median_s'] / ref['median_s']:.2f}x the time, "
        f"{ext['extra_peak_mb'] / max(ref['extra_peak_mb'], 1e-9):.2f}x the peak memory -> {path}"
    )


def _main_breakdown(args) -> None:
    from benchmarks.harness import machine_info, write_results

    with tempfile.TemporaryDirectory(prefix="mona_bench_breakdown_") as tmp:
        region_rows, op_rows = breakdown(args, Path(tmp))
    meta = machine_info(args.device)
    cmd = (
        f"`python -m benchmarks.bench_train_step --breakdown --device {args.device}"
        + (f" --scale {args.scale}" if args.scale != "both" else "")
        + (f" --methods {' '.join(args.methods)}" if args.methods else "")
        + (f" --tag {args.tag}" if args.tag else "")
        + "".join(f" {o}" for o in args.overrides)
        + "`"
    )
    common = (
        f"One training step (`train_one_iteration`, the whole of it) of each method: {args.warmup} warm-up steps, then "
        f"the mean of {args.repeats} steps. Demo scale: the packaged demo configs (96 x 96, 64-d, batch 8, 1 torch "
        "thread, as `mona demo` trains); paper scale: the packaged ACDC configs (256 x 256, 512-d, batch 6 = 3 + 3 "
        f"for the semi-supervised ones, torch's threads). {cmd}."
    )
    columns = [
        ("scale", "scale"),
        ("method", "method"),
        ("step_ms", "step ms"),
        ("region", "region (exclusive)"),
        ("ms", "ms"),
        ("pct", "% of step"),
    ]
    write_results(
        f"train_step_breakdown_{args.device}{args.tag}",
        region_rows,
        columns,
        meta,
        common
        + " Regions are marked in the loop and the methods (`mona.train.profile.region`); each row is the region's "
        "own time, its nested regions excluded; regions under 1 % of the step are left out.",
    )
    columns = [
        ("scale", "scale"),
        ("method", "method"),
        ("category", "operator category"),
        ("ms", "self ms"),
        ("pct", "% of step"),
    ]
    path = write_results(
        f"train_step_ops_{args.device}{args.tag}",
        op_rows,
        columns,
        meta,
        common + " One more step under `torch.profiler` (CPU): each operator's self time, grouped "
        "(`mona.train.profile.OP_CATEGORIES`); backward operators are in their forward's category. The "
        "profiler's own overhead lands in the last row.",
    )
    print(f"-> {path}")


if __name__ == "__main__":
    main()
