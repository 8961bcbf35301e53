"""``mona demo``: synthetic phantoms -> slice cache -> supervised training -> evaluation report.

Runs on a fresh machine with no data, on CPU in a few minutes (defaults in ``configs/demo.yaml``:
14 phantom patients (8 train, 2 val, 4 test) at 112-144 px, prepared at 96 x 96, 4 labeled
patients, 400 iterations of batch 8, lr 0.05 with poly decay, 1 CPU thread).
"""

from __future__ import annotations

import platform
import time
from importlib import resources
from pathlib import Path

import torch
from .data.prepare import atomic_write_json, prepare
from .data.synth import SynthConfig, write_phantoms
from .eval.report import evaluate_cache, learning_curve, write_report
from .train.checkpoint import load_model
from .train.loop import select_device, train


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os
    return f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, {torch.get_num_threads()} torch thread(s)"


def run_demo(out_dir: str | Path = "runs/demo", *, iterations: int | None = None, seed: int = 0,
             n_train: int = 8, n_val: int = 2, n_test: int = 4, size: int = 96, device: str = "auto",
             progress: bool = True, overrides: list[str] | None = None) -> dict:
    """Run the whole demo; returns the summary written to ``out_dir/report/summary.json``."""
    from .train.config import load_config

    t0 = time.time()
    out = Path(out_dir)
    raw, cache, run, rep = out / "raw", out / "cache", out / "run", out / "report"
    timings = {}
    print(f"[1/4] synthesising {n_train + n_val + n_test} phantom patients (ACDC layout) -> {raw}")
    write_phantoms(raw, SynthConfig(n_train=n_train, n_val=n_val, n_test=n_test, seed=seed), progress=progress)
    timings["synth_s"] = time.time() - t0
    t = time.time()
    print(f"[2/4] preparing the slice cache at {size} x {size} -> {cache}")
    prepare("acdc", raw, cache, size=size, progress=progress)
    timings["prepare_s"] = time.time() - t
    cfg_path = resources.files("mona").joinpath("configs/demo.yaml")
    ov = [f"data.cache={cache}", f"out_dir={run}", f"device={device}"]
    if iterations is not None:
        ov.append(f"iterations={iterations}")
    cfg = load_config(str(cfg_path), ov + list(overrides or []))
    t = time.time()
    print(f"[3/4] training the supervised baseline ({cfg.iterations} iterations, batch {cfg.data.batch_size}, "
          f"{cfg.data.labeled_patients} labeled patients) -> {run}")
    result = train(cfg, progress=progress)
    timings["train_s"] = time.time() - t
    t = time.time()
    print(f"[4/4] evaluating the best checkpoint (iteration {result.best_iteration}, val Dice "
          f"{result.best_dice:.3f}) on the {n_test} held-out test patients")
    dev = select_device(device)
    model, meta = load_model(run / "model.pt", dev)
    report = evaluate_cache(model, meta, cache, split="test", device=dev, overlay_dir=rep / "overlays",
                            progress=progress)
    timings["evaluate_s"] = time.time() - t
    curve = learning_curve(run, rep / "learning_curve.png")
    timings["total_s"] = time.time() - t0
    summary = {"command": "mona demo", "machine": machine_description(), "timings_s": timings,
               "iterations": cfg.iterations, "best_iteration": result.best_iteration,
               "best_val_dice": result.best_dice, "test_mean_dice": report.mean_dice,
               "test_per_class": report.summary}
    csv_path, json_path = write_report(report, rep, extra={"demo": summary})
    atomic_write_json(rep / "summary.json", summary)
    print()
    print(report.table())
    print()
    print(f"mean foreground Dice on held-out phantoms: {report.mean_dice:.4f}")
    print(f"wall time: {timings['total_s']:.0f} s (train {timings['train_s']:.0f} s) on {summary['machine']}")
    print(f"report:         {json_path}  (+ {csv_path.name}, summary.json)")
    print(f"overlays:       {rep / 'overlays'}")
    print(f"learning curve: {curve}")
    print(f"model:          {run / 'model.pt'}")
    return summary
