"""Fixtures of the fault tests: tiny phantoms and their cache, made with the CLI; a results log."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from faultlib import mona


@pytest.fixture(scope="session")
def fault_raw(tmp_path_factory) -> Path:
    """5 phantom patients (3 train, 1 val, 1 test), 40-48 px, 3 slices: `mona synth`."""
    raw = tmp_path_factory.mktemp("fault_raw") / "raw"
    r = mona(
        "synth",
        raw,
        "--train",
        "3",
        "--val",
        "1",
        "--test",
        "1",
        "--size-min",
        "40",
        "--size-max",
        "48",
        "--slices-min",
        "3",
        "--slices-max",
        "3",
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    return raw


@pytest.fixture(scope="session")
def fault_cache(fault_raw, tmp_path_factory) -> Path:
    """The phantoms prepared at 32 x 32: `mona prepare acdc`."""
    cache = tmp_path_factory.mktemp("fault_cache") / "cache"
    r = mona("prepare", "acdc", fault_raw, cache, "--size", "32", "--no-progress")
    assert r.returncode == 0, r.stderr
    return cache


@pytest.fixture(scope="session")
def fault_report():
    """``record(section, row)``: rows for tests/faults/README.md, written to $MONA_FAULT_REPORT (JSON)
    at the end of the session when that variable is set (nothing is written otherwise)."""
    rows: dict[str, list] = {}

    def record(section: str, row: dict) -> None:
        rows.setdefault(section, []).append(row)

    yield record
    path = os.environ.get("MONA_FAULT_REPORT")
    if path:
        Path(path).write_text(json.dumps(rows, indent=1))
