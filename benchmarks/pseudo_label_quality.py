"""The teacher's pseudo-label quality over training, per class, from kept runs' logs.

    python -m benchmarks.pseudo_label_quality DIR [DIR ...] [--name NAME]

``DIR``: a ``bench_semi_supervised --keep`` directory (every ``l*_s*_<method>`` run in it) or one run
directory. Reads the ``pl_*`` diagnostics of the train log (``log_pseudo_quality``: the teacher's
pseudo-labels of the unlabeled half against the phantoms' ground truth) of the final stage and prints,
per run and as the mean over runs of each method, the mean over logged steps of: per-class pseudo-label
Dice, ``pl_recall_<class>`` (the fraction of the class's pixels confidently labelled as it: what a
confidence-masked loss reinforces) and ``pl_against_<class>`` (confidently labelled as another class:
where it trains against the class), and the confident fraction and confident-foreground precision.
Writes ``benchmarks/results/<name>.md`` with ``--name``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

KEYS = ("dice", "recall", "against")
WEAK_KEYS = ("wrecall", "wagainst")  # at MONA's contrastive validity threshold (weak_threshold)


def run_dirs(paths: list[str]) -> list[Path]:
    out = []
    for p in map(Path, paths):
        if (p / "metrics.jsonl").exists():
            out.append(p)
        else:
            found = sorted(d for d in p.glob("l*_s*_*") if (d / "metrics.jsonl").exists())
            if not found:
                raise SystemExit(f"pseudo_label_quality: {p}: neither a run directory nor a --keep directory of runs")
            out += found
    return out


def run_quality(run: Path) -> dict | None:
    """Mean over the logged train steps of every ``pl_*`` value (NaN / empty values skipped)."""
    values: dict[str, list[float]] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("kind") != "train":
            continue
        for k, v in r.items():
            if k.startswith("pl_") and isinstance(v, (int, float)) and not math.isnan(v):
                values.setdefault(k, []).append(float(v))
    return {k: statistics.fmean(v) for k, v in values.items()} or None


def table(rows: list[tuple[str, dict]], classes: list[str]) -> list[str]:
    """One row per run; the weak-threshold columns (``wrecall``, ``wagainst``) when some run logged them."""
    keys = KEYS + tuple(k for k in WEAK_KEYS if any(f"pl_{k}_{c}" in q for _, q in rows for c in classes))
    cols = [f"{k} {c}" for c in classes for k in keys]
    out = ["| run | " + " | ".join(cols) + " | confident | fg precision |", "|---|" + "---|" * (len(cols) + 2)]
    for name, q in rows:
        cells = [q.get(f"pl_{k}_{c}") for c in classes for k in keys]
        cells += [q.get("pl_confident"), q.get("pl_fg_precision")]
        out.append(f"| {name} | " + " | ".join("" if x is None else f"{x:.3f}" for x in cells) + " |")
    return out


def method_means(per_run: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """Rows ``("**method** (mean of n)", {key: mean over that method's runs})`` for runs named
    ``l*_s*_<method>``, in the order the methods first appear."""
    per_method: dict[str, list[dict]] = {}
    for name, q in per_run:
        per_method.setdefault(name.split("_", 2)[-1], []).append(q)
    return [
        (f"**{m}** (mean of {len(qs)})", {k: statistics.fmean(q[k] for q in qs if k in q) for k in set().union(*qs)})
        for m, qs in per_method.items()
    ]


def write_markdown(name: str | None, text: str) -> None:
    """Print ``text``; with a name, also write it (atomically) to ``benchmarks/results/<name>.md``."""
    print(text)
    if name:
        from benchmarks.harness import RESULTS
        from mona.atomicio import atomic_write_text

        RESULTS.mkdir(parents=True, exist_ok=True)
        atomic_write_text(RESULTS / f"{name}.md", text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", nargs="+", metavar="DIR")
    ap.add_argument("--name", default=None, help="also write benchmarks/results/NAME.md")
    args = ap.parse_args()
    per_run = [(d.name, q) for d in run_dirs(args.dirs) if (q := run_quality(d)) is not None]
    if not per_run:
        raise SystemExit("pseudo_label_quality: no run logged pseudo-label diagnostics (log_pseudo_quality)")
    classes = list(dict.fromkeys(k.split("_", 2)[2] for _, q in per_run for k in q if k.startswith("pl_dice_")))
    means = method_means(per_run)
    command = "python -m benchmarks.pseudo_label_quality " + " ".join(sys.argv[1:])
    lines = [
        "# Teacher pseudo-label quality during training (unlabeled half, against the phantoms' labels)",
        "",
        "Mean over the logged steps of the final stage: per class `dice`, `recall` (confidently labelled as "
        "the class) and `against` (confidently labelled as another class), as fractions of the class's pixels; "
        "`wrecall` / `wagainst`: the same at MONA's contrastive validity threshold (`mona.weak_threshold`).",
        "",
        f"`{command}`",
        "",
        *table(means + per_run, classes),
    ]
    write_markdown(args.name, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
