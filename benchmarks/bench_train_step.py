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
        str(ROOT / "python/mona/configs/acdc_mona.yaml"),
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
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        _child(args.child)
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
                "overrides": overrides,
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
        + f" --device {args.device}`."
    )
    path = write_results(f"train_step_{args.device}" + ("_quick" if args.quick else ""), rows, columns, meta, notes)
    print(
        f"\next vs reference: {ext['median_s'] / ref['median_s']:.2f}x the time, "
        f"{ext['extra_peak_mb'] / max(ref['extra_peak_mb'], 1e-9):.2f}x the peak memory -> {path}"
    )


if __name__ == "__main__":
    main()
