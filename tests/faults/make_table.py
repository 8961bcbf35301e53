"""Markdown tables of a fault-test run for tests/faults/README.md.

    MONA_FAULT_KILLS=20 MONA_FAULT_REPORT=/tmp/faults.json python -m pytest -q -p no:cacheprovider tests/faults
    python tests/faults/make_table.py /tmp/faults.json > /tmp/tables.md

(``MONA_FAULT_REPORT``: the tests record what they injected and saw; see ``conftest.fault_report``.)
"""

from __future__ import annotations

import json
import re
import sys

TMP = re.compile(r"/tmp/pytest-of-[^/]+/pytest-\d+/")


def _points(d: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(d.items()))


def tables(rows: dict) -> str:
    out = []
    if "kill_train" in rows:
        out += [
            "### kill -9 in `mona train`, then `--resume`",
            "",
            "| method | iterations | kills | runs | chains finished | bit-identical to the uninterrupted run | "
            "kills by point |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in rows["kill_train"]:
            out.append(
                f"| {r['method']} | {r['iterations']} | {r['kills']} | {r['runs']} | {r['chains']} | "
                f"{r['identical']} of {r['chains']} | {_points(r['by_point'])} |"
            )
        out.append("")
    if "kill_prepare" in rows:
        out += [
            "### kill -9 in `mona prepare`",
            "",
            "| situation | kills | after the kill: no cache | the previous cache | the new cache, complete | "
            "re-runs equal to a clean cache (of runs) | kills by point |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in rows["kill_prepare"]:
            out.append(
                f"| {r['situation']} | {r['kills']} | {r['absent_after_kill']} | {r['previous_after_kill']} | "
                f"{r['new_complete_after_kill']} | {r['completed_identical']} of {r['runs']} | "
                f"{_points(r['by_point'])} |"
            )
        out.append("")
    for key, title in (
        ("write_errors", "Write errors"),
        ("nonfinite", "Non-finite losses and gradients"),
        ("locks", "Locks"),
        ("resume_config", "Resume with a changed config"),
    ):
        if key not in rows:
            continue
        out += [f"### {title}", "", "| fault | exit | message (last line of stderr) |", "|---|---|---|"]
        for r in rows[key]:
            what = r.get("fault") or r.get("case")
            extra = ""
            if r.get("previous_checkpoint") is not None:
                extra = (
                    f" — previous `last.pt` (iteration {r['previous_checkpoint']}) intact; `--resume` from it: "
                    f"{'bit-identical' if r['resumed_identical'] else 'differs'}"
                )
            out.append(f"| `{what}` | {r['exit']} | `{r['message']}`{extra} |")
        out.append("")
    if "bad_input" in rows:
        out += ["### Bad input", "", "| row | exit | message |", "|---|---|---|"]
        for r in rows["bad_input"]:
            msg = r["message"].replace("|", "\\|")
            out.append(f"| {r['row']} | {r['exit']} | `{msg}` |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(TMP.sub("TMP/", tables(json.loads(open(sys.argv[1]).read()))))
