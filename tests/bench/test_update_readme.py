"""benchmarks/update_readme.py: result tables copied into marked README blocks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.update_readme import update

ROOT = Path(__file__).resolve().parents[2]


def test_blocks_are_replaced_by_the_results_file_without_its_title(tmp_path):
    (tmp_path / "a_cpu.md").write_text("# a_cpu\n\nMachine: x\n\n| v |\n|---|\n| 1 |\n")
    text = "intro\n<!-- results: a_cpu -->\nold table\n<!-- /results -->\noutro\n"
    new, changed = update(text, tmp_path)
    assert new == "intro\n<!-- results: a_cpu -->\nMachine: x\n\n| v |\n|---|\n| 1 |\n<!-- /results -->\noutro\n"
    assert changed == ["a_cpu"]
    assert update(new, tmp_path) == (new, [])  # idempotent


def test_missing_results_file_names_it(tmp_path):
    with pytest.raises(SystemExit, match=r"b_cpu.md: no such results file"):
        update("<!-- results: b_cpu -->\n<!-- /results -->\n", tmp_path)


def test_check_reports_stale_blocks_and_writes_nothing(tmp_path):
    (tmp_path / "a_cpu.md").write_text("# a_cpu\nnew\n")
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results: a_cpu -->\nold\n<!-- /results -->\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.update_readme",
            "--check",
            "--readme",
            str(readme),
            "--results",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and "stale tables" in proc.stdout and "a_cpu" in proc.stdout
    assert readme.read_text() == "<!-- results: a_cpu -->\nold\n<!-- /results -->\n"


def test_the_repository_readme_matches_its_results():
    """The committed benchmarks/README.md shows exactly the committed results files."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.update_readme", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
