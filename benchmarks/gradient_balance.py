"""How large each term's gradient on the shared encoder is against L_sup's, from kept runs' logs.

    python -m benchmarks.gradient_balance DIR [DIR ...] [--name NAME]

``DIR``: a ``bench_semi_supervised --keep`` directory (every ``l*_s*_<method>`` run in it) or one run
directory. Reads the ``gn_<term>`` values of the train log (``log_grad_norms``: each weighted term's
gradient norm on the encoder, ramp-up included) of the final stage, on the steps where the ramp-up has
reached 1 (every step for a method without one), and prints per run and per method (the mean of the runs'
values) the median over those steps of ``gn_<term> / gn_sup`` and of ``gn_sup`` itself. Writes
``benchmarks/results/<name>.md`` with ``--name``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from benchmarks.pseudo_label_quality import method_means, run_dirs, write_markdown


def run_balance(run: Path) -> dict[str, float] | None:
    """``{"sup": median gn_sup, term: median gn_term / gn_sup}`` over the full-ramp steps, or None."""
    ratios: dict[str, list[float]] = {}
    sup: list[float] = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        ramp = r.get("ramp")
        if r.get("kind") != "train" or (ramp is not None and ramp < 0.999):
            continue
        g = r.get("gn_sup")
        if not isinstance(g, (int, float)) or not g > 0 or math.isnan(g):
            continue
        sup.append(float(g))
        for k, v in r.items():
            if k.startswith("gn_") and k != "gn_sup" and isinstance(v, (int, float)) and not math.isnan(v):
                ratios.setdefault(k[3:], []).append(float(v) / g)
    if not sup:
        return None
    return {"sup": statistics.median(sup), **{k: statistics.median(v) for k, v in ratios.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", nargs="+", metavar="DIR")
    ap.add_argument("--name", default=None, help="also write benchmarks/results/NAME.md")
    args = ap.parse_args()
    per_run = [(d.name, b) for d in run_dirs(args.dirs) if (b := run_balance(d)) is not None and len(b) > 1]
    if not per_run:
        raise SystemExit("gradient_balance: no run logged gradient norms of a term besides L_sup (log_grad_norms)")
    terms = list(dict.fromkeys(k for _, b in per_run for k in b if k != "sup"))
    means = method_means(per_run)
    command = "python -m benchmarks.gradient_balance " + " ".join(sys.argv[1:])
    lines = [
        "# Each term's gradient norm on the encoder relative to L_sup's (steps at full ramp-up)",
        "",
        "Median over the logged steps of the final stage with ramp-up 1 of `gn_<term> / gn_sup` (the weighted "
        "term's gradient norm on the shared encoder); `gn_sup`: the median of L_sup's own.",
        "",
        f"`{command}`",
        "",
        "| run | gn_sup | " + " | ".join(f"{t} / sup" for t in terms) + " |",
        "|---|---|" + "---|" * len(terms),
    ]
    for name, b in means + per_run:
        cells = [f"{b['sup']:.3f}"] + ["" if t not in b else f"{b[t]:.3f}" for t in terms]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    write_markdown(args.name, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
