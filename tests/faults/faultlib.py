"""Helpers of the fault tests: the real ``mona`` CLI in a subprocess, kills, and exact comparisons.

Every test here runs ``python -m mona ...`` as a user would (a fresh interpreter, the installed
entry point's code), optionally with ``MONA_FAULT`` set (see :mod:`mona.faults`), and inspects what
the process left on disk. Timing-dependent kills (``kill_after_setup``) use a seeded ``random.Random``
for the delays; which instruction a delay lands on still depends on the machine, which is the point.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]

# a tiny network and batch: one training step is a few ms, so a run is mostly interpreter start-up
TINY_MODEL = ["model.channels=[8,16,32,64,128]", "data.batch_size=2", "threads=1", "device=cpu"]

# the three methods on the tiny phantoms; mona runs both stages (GLCon, then MONA from its last.pt)
METHOD_ARGS: dict[str, list[str]] = {
    "supervised": ["--config", "demo", "data.labeled_patients=1", *TINY_MODEL],
    "glcon": [
        "--config",
        "demo_mona",
        "method=glcon",
        "pretrain_iterations=0",
        "data.labeled_patients=1",
        "data.labeled_bs=1",
        "glcon.mined_views=2",
        "glcon.local_crops=2",
        "model.embed_dim=8",
        *TINY_MODEL,
    ],
    "mona": [
        "--config",
        "demo_mona",
        "data.labeled_patients=1",
        "data.labeled_bs=1",
        "glcon.mined_views=2",
        "glcon.local_crops=2",
        "model.embed_dim=8",
        "mona.num_queries=4",
        "mona.num_negatives=8",
        "mona.bank_size=8",
        "mona.bank_push_per_class=4",
        "mona.knn_queue=4",
        "mona.knn_k=2",
        *TINY_MODEL,
    ],
}


def env(fault: str | None = None, **extra: str) -> dict[str, str]:
    """The subprocess environment: this checkout first on PYTHONPATH, one thread, ``MONA_FAULT``."""
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT / "python"), str(ROOT), e.get("PYTHONPATH", "")])
    e["OMP_NUM_THREADS"] = "1"
    e.pop("MONA_FAULT", None)
    e.pop("MONA_DEBUG", None)
    if fault:
        e["MONA_FAULT"] = fault
    e.update(extra)
    return e


def mona(
    *args: str | Path, fault: str | None = None, cwd: Path | None = None, **kw: Any
) -> subprocess.CompletedProcess:
    """Run ``python -m mona ARGS`` to completion; returns the CompletedProcess (text stdout / stderr)."""
    return subprocess.run(
        [sys.executable, "-m", "mona", *map(str, args)], env=env(fault), cwd=cwd, capture_output=True, text=True, **kw
    )


def start(*args: str | Path, fault: str | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mona", *map(str, args)],
        env=env(fault),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_after_setup(p: subprocess.Popen, delay: float) -> tuple[int, str]:
    """Wait until the run has set up (its "device cpu" log line), sleep ``delay`` s, SIGKILL it.
    Returns (exit status, stderr); -9 if the kill landed, 0 if the run had already finished."""
    assert p.stderr is not None
    lines = []
    for line in p.stderr:
        lines.append(line)
        if "device cpu" in line:
            break
    time.sleep(delay)
    try:
        p.send_signal(signal.SIGKILL)
    except ProcessLookupError:
        pass
    rest = p.stderr.read()
    return p.wait(), "".join(lines) + rest


def last_error_line(stderr: str) -> str:
    lines = [l for l in stderr.splitlines() if l.strip()]
    return lines[-1] if lines else ""


def read_csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def without(records: list[dict], *keys: str) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in keys} for r in records]


def same(a: Any, b: Any, where: str = "") -> list[str]:
    """Every place where two loaded checkpoints (nested dicts / lists / tensors) differ; bitwise."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        ok = (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(a, b)
        )
        return [] if ok else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where}: keys {sorted(map(str, a.keys() ^ b.keys()))}"]
        return [d for k in a for d in same(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where}: length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in same(x, y, f"{where}[{i}]")]
    if hasattr(a, "__array__") and hasattr(b, "__array__"):
        import numpy as np

        return [] if np.array_equal(np.asarray(a), np.asarray(b)) else [where]
    return [] if a == b else [where]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def stage_dirs(out: Path, method: str) -> list[Path]:
    """The output directories of a run, in stage order (mona: pretrain_glcon, then out)."""
    from mona.train.config import PRETRAIN_STAGES

    return [out / PRETRAIN_STAGES[method][1], out] if method in PRETRAIN_STAGES else [out]


def compare_runs(ref: Path, run: Path, method: str) -> list[str]:
    """Differences between an uninterrupted run and a killed-and-resumed one: the final checkpoint
    (every object, the RNG states, best / iteration bookkeeping), the exported model, and the logs
    (every iteration once, equal losses; only ``elapsed_s`` may differ)."""
    diffs = []
    for a, b in zip(stage_dirs(ref, method), stage_dirs(run, method)):
        for name in ("last.pt", "best.pt", "model.pt"):
            ca, cb = load(a / name), load(b / name)
            for ck in (ca, cb):
                ck.pop("config", None)  # out_dir differs by construction (same except out_dir/init_from)
            diffs += [f"{b.name}/{name}{d}" for d in same(ca, cb)]
        for name in ("train_log.csv", "val_log.csv"):
            ra, rb = without(read_csv(a / name), "elapsed_s"), without(read_csv(b / name), "elapsed_s")
            if ra != rb:
                diffs.append(
                    f"{b.name}/{name}: {len(ra)} rows vs {len(rb)} rows, first difference at "
                    f"{next((i for i, (x, y) in enumerate(zip(ra, rb)) if x != y), min(len(ra), len(rb)))}"
                )
        ja, jb = (
            without(read_jsonl(a / "metrics.jsonl"), "elapsed_s"),
            without(read_jsonl(b / "metrics.jsonl"), "elapsed_s"),
        )
        if ja != jb:
            diffs.append(f"{b.name}/metrics.jsonl differs ({len(ja)} vs {len(jb)} records)")
        its = [int(r["iteration"]) for r in read_csv(b / "train_log.csv")]
        if its != sorted(set(its)) or its != list(range(1, len(its) + 1)):
            diffs.append(f"{b.name}/train_log.csv iterations are not 1..n exactly once: {its}")
    return diffs
