"""kill -9 anywhere in `mona train`, then `--resume`: the result is bit-identical to an uninterrupted run.

Per method (supervised, glcon, and mona = GLCon stage then MONA stage in one command), an
uninterrupted reference run, then a chain of runs of the same command into another directory, each
killed with SIGKILL either at a named point (``MONA_FAULT``: inside a checkpoint write, after an
optimiser step, while appending a log line, while rewriting the logs or config.yaml on resume) at a
random arrival, or at a random time after set-up; the next run is ``--resume`` (continue wherever the
stages stopped). After every kill each stage's ``last.pt`` (if any) must load: a complete checkpoint,
never a partial one. When the chain finishes, the final checkpoints (every stateful object, RNG
states), ``best.pt``, ``model.pt`` and the logs (every iteration exactly once, the same losses) must
equal the reference's bit for bit. A chain that finishes before the kills are used up is checked the
same way and a new chain starts, until ``MONA_FAULT_KILLS`` kills (default 2 per method; the
published table uses 20) have landed.
"""

from __future__ import annotations

import math
import os
import random
from pathlib import Path

import pytest
from faultlib import METHOD_ARGS, compare_runs, kill_after_setup, mona, read_csv, stage_dirs, start

from mona.train.checkpoint import load_checkpoint

KILLS = int(os.environ.get("MONA_FAULT_KILLS", "2"))
STEPS = {"supervised": ["iterations=8"], "glcon": ["iterations=8"], "mona": ["iterations=6", "pretrain_iterations=4"]}
TOTAL = {"supervised": 8, "glcon": 8, "mona": 10}
COMMON = ["val_every=3", "log_every=1", "checkpoint_every=1", "--no-progress"]
# named points (mona.faults); "time" = SIGKILL at a random time after set-up
POINTS = [
    "checkpoint.mid_write",
    "checkpoint.before_rename",
    "train.after_step",
    "checkpoint.after_rename",
    "time",
    "log.append",
    "checkpoint.write",
    "config.before_rename",
    "log.before_rename",
    "time",
]


def _progress(out: Path, method: str) -> int:
    """Iterations saved in the stages' last.pt files; each must load (never a partial checkpoint)."""
    done = 0
    for d in stage_dirs(out, method):
        if (d / "last.pt").exists():
            done += load_checkpoint(d / "last.pt")["iteration"]  # raises on a partial / corrupt file
    return done


def _leftovers(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.name.endswith(".tmp") or p.name == ".mona.lock")


@pytest.mark.parametrize("method", ["supervised", "glcon", "mona"])
def test_kill_anywhere_then_resume_is_bit_identical(method, fault_cache, tmp_path, fault_report):
    base = ["train", *METHOD_ARGS[method], f"data.cache={fault_cache}", *STEPS[method], *COMMON]
    ref = tmp_path / "ref"
    r = mona(*base, f"out_dir={ref}")
    assert r.returncode == 0, r.stderr
    step_s = max(float(read_csv(d / "train_log.csv")[-1]["elapsed_s"]) for d in stage_dirs(ref, method)) / TOTAL[method]

    rng = random.Random(f"kill-{method}")
    kills, chains, identical, attempts, by_point = 0, 0, 0, 0, {}
    out, started = tmp_path / "run0", False
    while kills < KILLS:
        attempts += 1
        assert attempts <= 4 * KILLS + 8, f"only {kills} of {KILLS} kills landed in {attempts} runs"
        kind = POINTS[(attempts - 1 + 3 * list(STEPS).index(method)) % len(POINTS)]
        remaining_steps = TOTAL[method] - _progress(out, method)
        hmax = max(1, math.ceil(remaining_steps / max(1, KILLS - kills)))
        args = [*base, f"out_dir={out}"] + (["--resume"] if started else [])
        started = True
        if kind == "time":
            p = start(*args)
            rc, err = kill_after_setup(p, rng.uniform(0, step_s * hmax))
        else:
            fault = f"{kind}@{rng.randint(1, hmax + 1)}:kill"
            p = mona(*args, fault=fault)
            rc, err = p.returncode, p.stderr
        assert rc in (0, -9), f"{kind}: exit {rc}: {err[-2000:]}"
        _progress(out, method)  # every last.pt loads
        if rc == -9:
            kills += 1
            by_point[kind] = by_point.get(kind, 0) + 1
            continue
        # the chain finished (this run was not killed): it must equal the reference, then a new chain
        chains += 1
        diffs = compare_runs(ref, out, method)
        assert diffs == [], diffs
        assert _leftovers(out) == []
        identical += 1
        out, started = tmp_path / f"run{chains}", False
    if started:  # finish the last chain without faults
        r = mona(*base, f"out_dir={out}", "--resume")
        assert r.returncode == 0, r.stderr
        chains += 1
        diffs = compare_runs(ref, out, method)
        assert diffs == [], diffs
        assert _leftovers(out) == []
        identical += 1
    fault_report(
        "kill_train",
        {
            "method": method,
            "kills": kills,
            "runs": attempts + (1 if started else 0) + 1,
            "chains": chains,
            "identical": identical,
            "by_point": by_point,
            "iterations": TOTAL[method],
        },
    )
