"""kill -9 during `mona prepare`: the cache is the previous complete one or absent, never a
half-written cache that loads; a re-run completes it, equal to a clean run's cache byte for byte.

Two situations: a fresh cache directory, and a complete cache being re-prepared with other options
(``--size 24`` over a ``--size 32`` cache: every volume is rewritten). Each run is killed at a named
point of a file write (``prepare.mid_write``: bytes partly written; ``prepare.before_rename``: the
temporary file complete; ``prepare.after_rename``: one file replaced) at a random arrival, or at a
random time. ``MONA_FAULT_KILLS`` kills per situation (default 2; the table uses 20).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from faultlib import env, mona

from mona.data.dataset import SliceCache
from mona.errors import DataError

KILLS = int(os.environ.get("MONA_FAULT_KILLS", "2"))
POINTS = ["prepare.mid_write", "prepare.before_rename", "prepare.after_rename", "time"]
N_FILES = 10 * 3 + 1  # 10 volumes x (image, label, sidecar) + the manifest


def cache_state(root: Path) -> dict | None:
    """None if ``root`` is not a loadable cache, else its manifest and every array (all must load)."""
    try:
        c = SliceCache(root)
    except DataError as err:
        assert "not a prepared cache" in str(err) or "does not exist" in str(err), err
        return None
    arrays = {}
    for i, case in enumerate(c.cases):
        img, lab = c.arrays(i)
        arrays[case["case_id"]] = (np.array(img), np.array(lab))
    return {"manifest": c.manifest, "arrays": arrays}


def equal_states(a: dict, b: dict) -> bool:
    return (
        json.dumps(a["manifest"], sort_keys=True) == json.dumps(b["manifest"], sort_keys=True)
        and a["arrays"].keys() == b["arrays"].keys()
        and all(np.array_equal(x, y) for k in a["arrays"] for x, y in zip(a["arrays"][k], b["arrays"][k]))
    )


def _killed_prepare(args: list, out: Path, kind: str, rng: random.Random) -> int:
    if kind == "time":  # once the run holds the cache's lock (its inputs are checked, writing begins)
        import subprocess
        import sys

        p = subprocess.Popen(
            [sys.executable, "-m", "mona", *map(str, args)],
            env=env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while p.poll() is None and not (out / ".mona.lock").exists():
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.3))  # the 10 volumes take about half a second
        p.send_signal(signal.SIGKILL)
        return p.wait()
    return mona(*args, fault=f"{kind}@{rng.randint(1, N_FILES)}:kill").returncode


@pytest.mark.parametrize("situation", ["fresh", "reprepare"])
def test_kill_prepare_leaves_the_old_cache_or_none(situation, fault_raw, tmp_path, fault_report):
    ref = {}
    for size in ("32", "24"):
        assert (
            mona("prepare", "acdc", fault_raw, tmp_path / f"ref{size}", "--size", size, "--no-progress").returncode == 0
        )
        ref[size] = cache_state(tmp_path / f"ref{size}")
    rng = random.Random(f"prepare-{situation}")
    kills, runs, absent, previous, new, by_point = 0, 0, 0, 0, 0, {}
    while kills < KILLS:
        assert runs < 3 * KILLS + 4, f"only {kills} of {KILLS} kills landed in {runs} runs"
        out = tmp_path / f"c{runs}"
        if situation == "reprepare":
            shutil.copytree(tmp_path / "ref32", out)
            old = ref["32"]
        else:
            old = None
        kind = POINTS[runs % len(POINTS)]
        runs += 1
        rc = _killed_prepare(["prepare", "acdc", fault_raw, out, "--size", "24", "--no-progress"], out, kind, rng)
        state = cache_state(out)
        if rc == -9:
            kills += 1
            by_point[kind] = by_point.get(kind, 0) + 1
            if state is None:
                absent += 1
            elif old is not None and equal_states(state, old):
                previous += 1
            else:  # a cache that loads must be the previous complete one, or the finished new one
                assert equal_states(state, ref["24"]), kind
                new += 1
        else:
            assert rc == 0 and equal_states(state, ref["24"])
        r = mona("prepare", "acdc", fault_raw, out, "--size", "24", "--no-progress")
        assert r.returncode == 0, r.stderr
        assert equal_states(cache_state(out), ref["24"])
        assert sorted(p.name for p in out.rglob("*") if p.name.endswith(".tmp") or p.name == ".mona.lock") == []
    fault_report(
        "kill_prepare",
        {
            "situation": situation,
            "kills": kills,
            "absent_after_kill": absent,
            "previous_after_kill": previous,
            "new_complete_after_kill": new,
            "runs": runs,
            "completed_identical": runs,
            "by_point": by_point,
        },
    )
