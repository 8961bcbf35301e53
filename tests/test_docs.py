"""The README is a map: every place it names exists, and every op in its table lives where the
table's pattern says (csrc/X/X.cpp, X_checks.h, X_cpu.cpp, X_cuda.cu, mona_ext/ops/X.py, tests/ops/test_X.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Backticked repository paths: a top-level directory of the repository, then a path.
PATH = re.compile(r"`((?:csrc|mona_ext|tests|benchmarks|python|scripts|docs|examples)/[A-Za-z0-9_./-]*)`")


def _ops_table_rows() -> list[str]:
    """The op names of the README table headed `| op | what | ...`."""
    text = (ROOT / "README.md").read_text()
    start = text.index("| op | what |")
    rows = []
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def _ops_in_table() -> list[str]:
    ops = []
    for row in _ops_table_rows():
        ops += re.findall(r"`([a-z_]+)`", row.split("|")[1])
    return ops


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_named_path_exists(doc):
    missing = []
    for path in PATH.findall(doc.read_text()):
        if "X" in Path(path).name or "<" in path or "*" in path:  # a pattern, not a file
            continue
        if not (ROOT / path.rstrip("/")).exists():
            missing.append(path)
    assert not missing, f"{doc.name} names paths that do not exist: {missing}"


def test_the_ops_table_lists_every_registered_op():
    import mona_ext

    public = {name for name in mona_ext.build_info()["ops"] if not name.endswith("_backward")}
    assert set(_ops_in_table()) == public


@pytest.mark.parametrize("op", _ops_in_table())
def test_each_op_lives_where_the_map_says(op):
    if op == "contrast_loss":  # the composite: schema and implementation in Python, no C++
        places = ["mona_ext/ops/contrast_loss.py", "tests/ops/test_contrast_loss.py"]
        assert not list((ROOT / "csrc" / op).glob("*")), f"{op} is a composite: no csrc/{op}/"
    elif op in ("bank_push", "queue_push"):  # two ops of one ring-buffer family, one folder
        places = [f"csrc/bank/bank{suffix}" for suffix in (".cpp", "_checks.h", "_cpu.cpp", "_cuda.cu")]
        places += ["mona_ext/ops/bank.py", "tests/ops/test_bank.py"]
    else:
        places = [f"csrc/{op}/{op}{suffix}" for suffix in (".cpp", "_checks.h", "_cpu.cpp", "_cuda.cu")]
        places += [f"mona_ext/ops/{op}.py", f"tests/ops/test_{op}.py"]
    missing = [p for p in places if not (ROOT / p).exists()]
    assert not missing, f"{op}: missing {missing}"
    schema_file = "csrc/bank/bank.cpp" if op.endswith("_push") else f"csrc/{op}/{op}.cpp"
    if op != "contrast_loss":
        schema = re.search(r'm\.def\(\s*"' + op + r"\(", (ROOT / schema_file).read_text())
        assert schema, f"{op}: schema not in {schema_file}"
