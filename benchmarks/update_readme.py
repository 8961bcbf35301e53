"""Copies the result tables of benchmarks/results/*.md into benchmarks/README.md.

    python -m benchmarks.update_readme [--check]

benchmarks/README.md marks each table with ``<!-- results: NAME -->`` ... ``<!-- /results -->``;
the block is replaced by ``benchmarks/results/NAME.md`` (without its title line), so that the README
shows exactly what the last run of the command above the block wrote. ``--check`` only reports
blocks whose text differs from the results file (exit 1), without writing.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BLOCK = re.compile(r"(<!-- results: (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)


def table(name: str, results: Path) -> str:
    path = results / f"{name}.md"
    if not path.is_file():
        raise SystemExit(f"update_readme: {path}: no such results file (run the benchmark above the block first)")
    lines = path.read_text().splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    return "\n".join(lines).strip() + "\n"


def update(text: str, results: Path) -> tuple[str, list[str]]:
    """Returns the new text and the names of the blocks that changed."""
    changed: list[str] = []

    def replace(m: re.Match) -> str:
        body = table(m.group("name"), results)
        if body != m.group("body"):
            changed.append(m.group("name"))
        return m.group(1) + body + m.group(4)

    return BLOCK.sub(replace, text), changed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="report stale blocks, write nothing")
    ap.add_argument("--readme", type=Path, default=HERE / "README.md")
    ap.add_argument("--results", type=Path, default=HERE / "results")
    args = ap.parse_args()
    text = args.readme.read_text()
    new, changed = update(text, args.results)
    if args.check:
        if changed:
            print(f"update_readme: stale tables in {args.readme}: {', '.join(changed)}")
            sys.exit(1)
        print(f"update_readme: {args.readme} matches {args.results}")
        return
    tmp = args.readme.with_suffix(".md.tmp")
    tmp.write_text(new)
    os.replace(tmp, args.readme)
    print(f"update_readme: {len(changed)} table(s) updated: {', '.join(changed) or 'none'}")


if __name__ == "__main__":
    main()
