"""Does the unlabeled data help? Every method on the same phantoms, seeds, budget and evaluation.

    python -m benchmarks.bench_semi_supervised [--methods supervised supervised_strong mean_teacher mona]
        [--seeds 0 1 2 3 4] [--labeled 1] [--iterations N] [--jobs 2] [--name NAME] [--quick] [KEY=VALUE ...]

Protocol (the defaults; ``--help`` lists the knobs):

* phantoms of seed ``s`` (``mona synth`` with the long-tail class when ``--tail``), prepared at
  ``--size`` px; 8 train patients of which the first ``labeled`` are labeled, 2 val, 4 test (8 volumes);
* every method trains with training seed ``1337 + s`` on the same labeled patient(s) for the same
  number of training iterations (two-stage methods: stage 1 before it, 100 per 400, as the demo), each run in its own process with
  one torch thread, ``--jobs`` at once; the model ``eval_model`` picks on the val patients is evaluated
  on the test volumes (mean foreground Dice and per class, volume Dice at the original geometry);
* ``METHODS`` below: the baselines, mean teacher, MONA and MONA with one term switched off (the
  ablation variants ``mona-no_*``); ``KEY=VALUE`` overrides apply to every run (give ``--name``).

Writes ``benchmarks/results/<name>.json``: ``{"runs": [{"labeled", "seed", "method", "mean_dice",
"dice": {class: value}, "iterations", "best_model", "best_iteration", "val_curve", "wall_s"}], "summary": [...],
"meta": {...}}`` and ``<name>.md``: mean +- sd per method and class, and the paired differences
against ``supervised_strong`` (the fair baseline: same augmentation, no unlabeled data).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mona.demo import DEMO_METHODS

ROOT = Path(__file__).resolve().parent.parent
_LOCK = threading.Lock()
BASELINE = "supervised_strong"

# method name -> (packaged config, overrides). The semi-supervised runs use the demo's MONA config
# (batch 8 labeled + 8 unlabeled since issue 22); the supervised ones the demo's supervised config
# (batch 8 labeled).
_NO = {
    "unsup": ["mona.unsup_weight=0"],
    "contrast": ["mona.contrast_weight=0"],
    "eqv": ["mona.eqv_weight=0"],
    "nn": ["mona.nn_weight=0"],
    "glcon": ["pretrain_iterations=0"],
}
METHODS: dict[str, tuple[str, list[str]]] = {
    # supervised, supervised_strong, mean_teacher, mona, unimatch (issue 25) and bcp (issue 25: its
    # copy-paste pre-training in the quarter of the budget MONA gives GLCon, the paper's 10k of 40k):
    # exactly the configs of `mona demo --methods ...`
    **{m: (v[2], list(v[3])) for m, v in DEMO_METHODS.items()},
    # SSL4MIS's mean teacher (MSE of the softmax maps at 0.1; the default was this until issue 22
    # measured that its gradient is 1.3 % of L_sup's: the runs of that default are named mean_teacher_mse)
    "mean_teacher_mse": (
        "demo_mona",
        ["method=mean_teacher", "pretrain_iterations=0", "mean_teacher.consistency=mse", "mean_teacher.weight=0.1"],
    ),
    **{f"mona-no_{k}": ("demo_mona", v) for k, v in _NO.items()},
    # the paper's relational weights (GLCon global + local, L_nn at 1; the demo config has 0.1)
    "mona-paper_weights": ("demo_mona", ["glcon.global_weight=1", "glcon.local_weight=1", "mona.nn_weight=1"]),
    # the demo's semi-supervised batch before issue 22 (4 labeled + 4 unlabeled; now 8 + 8, the same
    # labeled signal per step as supervised_strong): runs named mona-labeled8 before are now `mona`
    "mona-labeled4": ("demo_mona", ["data.batch_size=8", "data.labeled_bs=4"]),
    "mean_teacher-labeled4": (
        "demo_mona",
        [*DEMO_METHODS["mean_teacher"][3], "data.batch_size=8", "data.labeled_bs=4"],
    ),
    # class-wise adaptive pseudo-label thresholds (FlexMatch-style; the tail class is almost never
    # confidently predicted at the one threshold 0.97)
    "mona-adaptive_thr": ("demo_mona", ["mona.class_thresholds=adaptive"]),
    # the contrastive term's pseudo-labels at the paper's one confidence threshold (0.97, as L_unsup's)
    # instead of ReCo's weak 0.7, at which most tail-class pixels are confidently another class
    "mona-contrast_strong": ("demo_mona", ["mona.weak_threshold=0.97"]),
    # ReMixMatch's distribution alignment of the teacher's probabilities to the labeled class shares
    # (would correct a teacher that under-predicts the tail class; measured: it does not, rejected)
    "mona-da": ("demo_mona", ["mona.distribution_alignment=true"]),
    # issue 25: the peer methods with the shared stabilisers (sigmoid ramp-up of their pseudo-labelled
    # terms, no pseudo-label term before the warm-up); the papers have neither, and both self-label from
    # a model that has seen a few labeled slices
    "bcp-rampup": ("demo_mona", [*DEMO_METHODS["bcp"][3], "bcp.rampup=true"]),
    "unimatch-rampup": ("demo_mona", [*DEMO_METHODS["unimatch"][3], "unimatch.rampup=true"]),
    # BCP's control: its copy-paste loop with the pseudo-labelled parts at weight 0 (the labeled parts of
    # the mixed images only: what BCP's supervision alone gives)
    "bcp-sup_only": ("demo_mona", [*DEMO_METHODS["bcp"][3], "bcp.u_weight=0"]),
    # MONA's pipeline with every unlabeled term off: L_sup on the labeled half of MONA's batch
    "mona-sup_only": (
        "demo_mona",
        [
            "pretrain_iterations=0",
            "mona.unsup_weight=0",
            "mona.contrast_weight=0",
            "mona.eqv_weight=0",
            "mona.nn_weight=0",
        ],
    ),
}
DEFAULT_METHODS = ["supervised", "supervised_strong", "mean_teacher", "mona"]

# The budget (``--iterations``, default 400) is every method's training schedule; a two-stage method
# (GLCon + MONA, BCP) runs its stage 1 (the packaged ratio, 100 per 400) before a stage 2 of the whole
# budget: the papers' protocol (pre-training, then fine-tuning as long as the supervised schedule) and
# the packaged acdc_mona's. Until issue 22 measured otherwise stage 1 took its iterations from the budget
# (stage 2 then saw 300 labeled steps to the baseline's 400, and the tail class, the last one learned,
# did not gain); the variants below keep that split ("share"), train the baseline for those 300 steps
# ("minus_stage1": supervised_strong-stage2, the old stage 2's length) and for MONA's total of 500
# ("plus_stage1": as many iterations as MONA's two stages, more labeled steps). Each run is recorded
# under its real total of iterations.
BUDGET_SPLIT: dict[str, str] = {
    "mona-glcon_share": "share",
    "bcp-pretrain_share": "share",
    "bcp-rampup-pretrain_share": "share",
    "supervised_strong-stage2": "minus_stage1",
    "supervised_strong-plus_glcon": "plus_stage1",
}
METHODS["mona-glcon_share"] = METHODS["mona"]
METHODS["bcp-pretrain_share"] = METHODS["bcp"]
METHODS["bcp-rampup-pretrain_share"] = METHODS["bcp-rampup"]
METHODS["supervised_strong-stage2"] = METHODS["supervised_strong"]
METHODS["supervised_strong-plus_glcon"] = METHODS["supervised_strong"]
# the runs of today's `mona` made under this name before the default changed (the records keep it)
METHODS["mona-glcon_on_top"] = METHODS["mona"]


def run_config(c: dict):
    """The ``TrainConfig`` of one job (``c``: a job dict of :func:`main`). Returns (config, stage-1 iterations)."""
    from mona.demo import packaged_config, stage1_iterations
    from mona.train import load_config
    from mona.train.config import PRETRAIN_STAGES

    config, method_overrides = METHODS[c["method"]]
    base = load_config(packaged_config(config), [f"data.cache={c['cache']}", "out_dir=/tmp/unused"])
    budget = c["iterations"] or base.iterations
    split = BUDGET_SPLIT.get(c["method"])
    mona_base = load_config(packaged_config(METHODS["mona"][0]), [f"data.cache={c['cache']}", "out_dir=/tmp/unused"])
    if split in ("minus_stage1", "plus_stage1"):  # the budget less / plus the GLCon iterations MONA runs
        budget += (-1 if split == "minus_stage1" else 1) * stage1_iterations(budget, mona_base)
    ovs = [
        f"data.cache={c['cache']}",
        f"out_dir={c['out']}",
        "device=cpu",
        "threads=1",
        f"seed={1337 + c['seed']}",
        f"data.labeled_patients={c['labeled']}",
    ]
    probe = load_config(packaged_config(config), ovs + method_overrides + c["overrides"])
    pre = 0
    if probe.method in PRETRAIN_STAGES and probe.pretrain_iterations > 0:
        pre = stage1_iterations(budget, mona_base)  # stage 1 (GLCon, BCP's copy-paste pre-training)
    ovs += [f"iterations={budget - pre if split == 'share' else budget}", f"pretrain_iterations={pre}"]
    return load_config(packaged_config(config), ovs + method_overrides + c["overrides"]), pre


def run_total(c: dict) -> int:
    """The iterations a job trains in all (both stages): the key its record is found by."""
    cfg, pre = run_config(c)
    return cfg.iterations + pre


def config_digest(cfg) -> str:
    """A digest of everything a run's config sets except where it reads and writes (``out_dir``,
    ``data.cache``): two runs with one digest trained with the same settings."""
    d = cfg.to_dict()
    d["out_dir"] = ""
    d["data"]["cache"] = ""
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _child(spec: str) -> None:
    """One training run + test evaluation (in its own process: one torch thread, its own RNG state)."""
    import torch

    from mona.eval.report import evaluate_cache
    from mona.train import run_stages
    from mona.train.checkpoint import load_model
    from mona.train.config import PRETRAIN_STAGES

    c = json.loads(spec)
    cfg, pre = run_config(c)
    total = cfg.iterations + pre
    t0 = time.time()
    result = run_stages(cfg, progress=False)[-1]
    model, meta = load_model(Path(cfg.out_dir) / "model.pt", torch.device("cpu"))
    report = evaluate_cache(model, meta, c["cache"], split="test", device=torch.device("cpu"), progress=False)
    curve = []
    stage1 = Path(cfg.out_dir) / PRETRAIN_STAGES.get(cfg.method, ("", "-"))[1]
    for stage_dir, offset in ((stage1, 0), (Path(cfg.out_dir), pre)):
        log = stage_dir / "metrics.jsonl"
        if pre == 0 and stage_dir == stage1 or not log.exists():
            continue
        for line in log.read_text().splitlines():
            r = json.loads(line)
            if r.get("kind") == "val":
                curve.append([r["iteration"] + offset, r["mean_dice"], r.get("student_dice"), r.get("teacher_dice")])
    print(
        json.dumps(
            {
                "labeled": c["labeled"],
                "seed": c["seed"],
                "method": c["method"],
                "mean_dice": report.mean_dice,
                "dice": {name: s["dice"] for name, s in report.summary.items()},
                "iterations": total,
                "pretrain_iterations": pre,
                "overrides": c["overrides"],
                "config_digest": config_digest(cfg),
                "best_model": result.best_model,
                "best_iteration": result.best_iteration,
                "val_curve": curve,
                "train_s": round(time.time() - t0, 1),
            }
        )
    )


def _cpu() -> str:
    from benchmarks.harness import machine_info

    return machine_info("cpu")["cpu"]


def machines(runs: list[dict]) -> str:
    """The machines a set of runs came from, with their run counts (``cpu`` of each record)."""
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.get("cpu", "unknown")] = counts.get(r.get("cpu", "unknown"), 0) + 1
    return "; ".join(f"{cpu} ({n} runs)" for cpu, n in counts.items()) if len(counts) > 1 else next(iter(counts))


def _run_one(job: dict) -> dict:
    t0 = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_semi_supervised", "--child", json.dumps(job)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{job['method']}, seed {job['seed']}, {job['labeled']} labeled failed:\n{proc.stderr[-4000:]}"
        )
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall_s"] = round(time.time() - t0, 1)
    out["cpu"] = _cpu()  # a summary of runs from several machines names each
    if job.get("progress_file"):  # every finished run at once: an interrupted benchmark keeps what it measured
        with _LOCK, open(job["progress_file"], "a") as fh:
            fh.write(json.dumps(out) + "\n")
    dice = " ".join(f"{k} {v:.3f}" for k, v in out["dice"].items())
    print(
        f"  {job['labeled']} labeled, seed {job['seed']}, {job['method']:<18} mean Dice {out['mean_dice']:.4f} "
        f"({dice}; {out['best_model']} @ {out['best_iteration']}), {out['wall_s']:.0f} s",
        flush=True,
    )
    return out


def _check_recorded(jobs: list[dict], keys: list[tuple], done: dict[tuple, dict], progress: Path) -> None:
    """A recorded run is reused only if it trained with the config the job would use now (the packaged
    config or a method's overrides may have changed since): else an error, never a stale result."""
    for j, k in zip(jobs, keys):
        r = done.get(k)
        if r is None or "config_digest" not in r:  # records before 2026-12-07 carry no digest
            continue
        want = config_digest(run_config(j)[0])
        if r["config_digest"] != want:
            raise SystemExit(
                f"{progress}: the recorded run of {j['method']} (seed {j['seed']}, {j['labeled']} labeled) was "
                f"trained with other settings than {j['method']} has now (config digest {r['config_digest']} != "
                f"{want}: its packaged config or overrides changed); use another --keep directory"
            )


def _recorded_runs(progress: Path, overrides: list[str]) -> dict[tuple, dict]:
    """The runs an interrupted benchmark with the same ``--keep`` directory already finished, keyed by
    (labeled, method, seed, iterations), so that a re-run of the command trains only what is missing.
    A recorded run made with other overrides is an error, never silently reused."""
    if not progress.exists():
        return {}
    done: dict[tuple, dict] = {}
    for i, line in enumerate(progress.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError:  # the last line of a run killed while writing it
            print(f"{progress}:{i}: an unreadable line is ignored (its run is trained again)", flush=True)
            continue
        if r.get("overrides", []) != list(overrides):
            raise SystemExit(
                f"{progress}:{i}: recorded with overrides {r.get('overrides', [])}, this command has {overrides}; "
                "use another --keep directory"
            )
        done[(r["labeled"], r["method"], r["seed"], r["iterations"])] = r
    return done


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def name_by_total(runs: list[dict], baseline: str = BASELINE) -> list[dict]:
    """A method whose runs trained for different totals of iterations (``mona`` at 400 before its default
    changed, at 500 after) is two configurations: its runs are renamed ``method@total`` so that they are
    never averaged or paired as one. The baseline must have one total (else an error)."""
    totals: dict[str, set] = {}
    for r in runs:
        totals.setdefault(r["method"], set()).add(r["iterations"])
    mixed = {m for m, t in totals.items() if len(t) > 1}
    if baseline in mixed:
        raise SystemExit(
            f"--summarise: the baseline {baseline} has runs of {sorted(totals[baseline])} iterations; "
            "summarise one budget at a time"
        )
    return [{**r, "method": f"{r['method']}@{r['iterations']}"} if r["method"] in mixed else r for r in runs]


def dedupe_runs(runs: list[dict]) -> list[dict]:
    """One run per (labeled, method, seed, iterations): a repeat (the same run in two results files, or a
    re-run) is dropped when it reproduced the first one's Dice exactly, and is an error otherwise (two
    different results for one configuration must not be averaged silently)."""
    seen: dict[tuple, dict] = {}
    out = []
    for r in runs:
        key = (r["labeled"], r["method"], r["seed"], r["iterations"])
        if key not in seen:
            seen[key] = r
            out.append(r)
        elif seen[key]["dice"] != r["dice"]:
            raise SystemExit(
                f"--summarise: two different results for labeled {key[0]}, method {key[1]}, seed {key[2]}: "
                f"mean Dice {seen[key]['mean_dice']:.6f} ({seen[key].get('cpu', 'unknown')}) and {r['mean_dice']:.6f} "
                f"({r.get('cpu', 'unknown')})"
            )
    return out


def summarise(runs: list[dict], baseline: str = BASELINE) -> list[dict]:
    """Per (labeled, method): mean +- sd over seeds of the mean foreground Dice and of each class, and the
    paired difference against ``baseline`` on the same seeds (mean +- sd, wins, worst)."""
    rows = []
    for n in sorted({r["labeled"] for r in runs}):
        sel = [r for r in runs if r["labeled"] == n]
        base = {r["seed"]: r for r in sel if r["method"] == baseline}
        for method in dict.fromkeys(r["method"] for r in sel):
            mine = sorted((r for r in sel if r["method"] == method), key=lambda r: r["seed"])
            classes = list(mine[0]["dice"])
            row = {"labeled": n, "method": method, "seeds": [r["seed"] for r in mine]}
            row["mean_dice"] = _mean_sd([r["mean_dice"] for r in mine])
            row["dice"] = {c: _mean_sd([r["dice"][c] for r in mine]) for c in classes}
            paired = [r for r in mine if r["seed"] in base]
            if method != baseline and paired:
                d = [r["mean_dice"] - base[r["seed"]]["mean_dice"] for r in paired]
                row["vs_baseline"] = {
                    "mean_dice": _mean_sd(d),
                    "wins": sum(x > 0 for x in d),
                    "seeds": len(d),
                    "worst": min(d),
                    "per_seed": d,
                    "dice": {c: _mean_sd([r["dice"][c] - base[r["seed"]]["dice"][c] for r in paired]) for c in classes},
                }
            rows.append(row)
    return rows


def _fmt(ms: tuple[float, float], sign: bool = False) -> str:
    return f"{ms[0]:+.4f} +- {ms[1]:.4f}" if sign else f"{ms[0]:.4f} +- {ms[1]:.4f}"


def markdown(
    rows: list[dict], meta: dict, command: str, runs: list[dict] | None = None, also_vs: list[str] | None = None
) -> str:
    classes = list(rows[0]["dice"]) if rows else []
    out = [
        "# Semi-supervised comparison on phantoms",
        "",
        f"Mean +- sd over seeds of the test Dice (8 volumes per seed); `{BASELINE}` is the fair baseline (the "
        f"semi-supervised student's augmentation, no unlabeled data). {meta['iterations_note']}. Machine: "
        f"{meta['cpu']} ({meta['cores']} cores), torch {meta['torch']}, {meta['date']}; {meta['jobs']} runs at a time, 1 torch thread each; wall {meta['wall_s']} s.",
        "",
        f"`{command}`",
        "",
        "| labeled | method | seeds | mean Dice | " + " | ".join(classes) + f" | - {BASELINE} (mean) | wins | worst |",
        "|---|---|---|---|" + "---|" * len(classes) + "---|---|---|",
    ]
    for r in rows:
        vb = r.get("vs_baseline")
        out.append(
            f"| {r['labeled']} | {r['method']} | {len(r['seeds'])} | {_fmt(r['mean_dice'])} | "
            + " | ".join(_fmt(r["dice"][c]) for c in classes)
            + (
                f" | {_fmt(vb['mean_dice'], True)} | {vb['wins']}/{vb['seeds']} | {vb['worst']:+.4f} |"
                if vb
                else " | | | |"
            )
        )
    out += ["", f"Per class, paired difference against `{BASELINE}` (mean +- sd over seeds):", ""]
    out += ["| labeled | method | " + " | ".join(classes) + " |", "|---|---|" + "---|" * len(classes)]
    for r in rows:
        if "vs_baseline" in r:
            vb = r["vs_baseline"]
            out.append(
                f"| {r['labeled']} | {r['method']} | " + " | ".join(_fmt(vb["dice"][c], True) for c in classes) + " |"
            )
    for ref in also_vs or []:
        # the same paired statistics against another method (e.g. each ablation against full MONA)
        vs = [r for r in summarise(runs or [], baseline=ref) if "vs_baseline" in r]
        out += [
            "",
            f"Paired difference against `{ref}` on the seeds both have (mean +- sd; wins; worst; per class):",
            "",
            "| labeled | method | seeds | - " + ref + " (mean) | wins | worst | " + " | ".join(classes) + " |",
            "|---|---|---|---|---|---|" + "---|" * len(classes),
        ]
        for r in vs:
            vb = r["vs_baseline"]
            out.append(
                f"| {r['labeled']} | {r['method']} | {vb['seeds']} | {_fmt(vb['mean_dice'], True)} | "
                f"{vb['wins']}/{vb['seeds']} | {vb['worst']:+.4f} | "
                + " | ".join(_fmt(vb["dice"][c], True) for c in classes)
                + " |"
            )
    gaps = gap_curves(runs) if runs else []
    if gaps:
        its = sorted({it for g in gaps for it in g["gap"]})
        out += [
            "",
            f"Validation Dice (val patients, the model `eval_model` picks) minus `{BASELINE}`'s at the same "
            "iteration, mean +- sd over seeds: the curve of the gap vs iterations (a two-stage method's first "
            "iterations are its stage 1).",
            "",
            "| labeled | method | " + " | ".join(str(i) for i in its) + " |",
            "|---|---|" + "---|" * len(its),
        ]
        for g in gaps:
            out.append(
                f"| {g['labeled']} | {g['method']} | "
                + " | ".join(_fmt(g["gap"][i], True) if i in g["gap"] else "" for i in its)
                + " |"
            )
    return "\n".join(out) + "\n"


def gap_curves(runs: list[dict], baseline: str = BASELINE) -> list[dict]:
    """Per (labeled, method != baseline): at every validated iteration both runs of a seed share, the
    mean +- sd over seeds of (method's val Dice - baseline's val Dice)."""
    out = []
    for n in sorted({r["labeled"] for r in runs}):
        sel = [r for r in runs if r["labeled"] == n]
        base = {r["seed"]: dict((p[0], p[1]) for p in r.get("val_curve") or []) for r in sel if r["method"] == baseline}
        for method in dict.fromkeys(r["method"] for r in sel if r["method"] != baseline):
            diffs: dict[int, list[float]] = {}
            for r in sel:
                if r["method"] != method or r["seed"] not in base:
                    continue
                for it, dice, *_ in r.get("val_curve") or []:
                    if it in base[r["seed"]]:
                        diffs.setdefault(it, []).append(dice - base[r["seed"]][it])
            if diffs:
                out.append({"labeled": n, "method": method, "gap": {i: _mean_sd(v) for i, v in sorted(diffs.items())}})
    return out


def prepare_phantoms(root: Path, seed: int, size: int, tail: bool) -> Path:
    from mona.data.prepare import prepare
    from mona.data.synth import SynthConfig, write_phantoms

    raw, cache = root / f"raw_s{seed}", root / f"cache_s{seed}"
    kw = {"tail": True} if tail else {}
    write_phantoms(raw, SynthConfig(n_train=8, n_val=2, n_test=4, seed=seed, **kw), progress=False)
    prepare("phantom" if tail else "acdc", raw, cache, size=size, progress=False)
    return cache


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--methods",
        nargs="+",
        default=None,
        choices=list(METHODS),
        metavar="METHOD",
        help=f"methods to train (default: {' '.join(DEFAULT_METHODS)}); with --summarise: tabulate only these",
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--labeled", type=int, nargs="+", default=[1], help="labeled patients (default 1)")
    ap.add_argument("--iterations", type=int, default=None, help="budget per run (default: the demo's, 400)")
    ap.add_argument("--size", type=int, default=96, help="phantom slice size (default 96)")
    ap.add_argument(
        "--tail", action=argparse.BooleanOptionalAction, default=True, help="long-tail phantoms (class PM; default on)"
    )
    ap.add_argument("--jobs", type=int, default=2, help="runs at once (one torch thread each)")
    ap.add_argument("--name", default="semi_supervised", help="results file name")
    ap.add_argument("--quick", action="store_true", help="one seed, 1 labeled, 8 iterations: a smoke run")
    ap.add_argument(
        "--keep",
        default=None,
        help="keep the run directories here (default: a temporary directory); a re-run with the same directory "
        "trains only the runs its runs.jsonl does not hold yet (an interrupted benchmark resumes)",
    )
    ap.add_argument(
        "--summarise",
        nargs="+",
        default=None,
        metavar="RUNS.jsonl",
        help="train nothing: tabulate the runs recorded in these files (a --keep directory's runs.jsonl, or a "
        "results .json of this benchmark), e.g. "
        "ablation runs together with the main table's baseline runs of the same seeds",
    )
    ap.add_argument(
        "--also-vs",
        nargs="+",
        default=[],
        metavar="METHOD",
        help="also tabulate the paired differences against these methods (e.g. mona, for the ablations)",
    )
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    methods_given = args.methods is not None
    args.methods = args.methods or DEFAULT_METHODS
    if args.child is not None:
        _child(args.child)
        return
    if args.summarise:
        runs = []
        for f in args.summarise:
            text = Path(f).read_text()
            if f.endswith(".json"):  # a results file of this benchmark: its runs, on its machine unless they say
                data = json.loads(text)
                runs += [{"cpu": data["meta"].get("cpu", "unknown"), **r} for r in data["runs"]]
            else:  # a --keep directory's runs.jsonl (records before 2026-12-07 do not name their machine)
                runs += [{"cpu": "unknown", **json.loads(line)} for line in text.splitlines() if line.strip()]
        runs = dedupe_runs(runs)
        if methods_given:
            runs = [r for r in runs if r["method"] in args.methods]
            if not runs:
                raise SystemExit(f"--summarise: no run of {args.methods} in {args.summarise}")
        runs = name_by_total(runs)
        extra = {"jobs": "-", "wall_s": "-", "sources": args.summarise, "cpu": machines(runs)}
        _write(args.name, runs, args, extra, runs[0]["iterations"])
        return
    seeds, labeled, iterations = args.seeds, args.labeled, args.iterations
    if args.quick:
        seeds, labeled, iterations = seeds[:1], labeled[:1], 8
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="mona_bench_ssl_") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        caches = {s: prepare_phantoms(root, s, args.size, args.tail) for s in seeds}
        progress = root / "runs.jsonl"
        done = _recorded_runs(progress, args.overrides)
        jobs = [
            {
                "out": str(root / f"l{n}_s{s}_{m}"),
                "cache": str(caches[s]),
                "seed": s,
                "labeled": n,
                "method": m,
                "iterations": iterations,
                "overrides": args.overrides,
                "progress_file": str(progress),
            }
            for n in labeled
            for s in seeds
            for m in args.methods
        ]
        keys = [(j["labeled"], j["method"], j["seed"], run_total(j)) for j in jobs]
        _check_recorded(jobs, keys, done, progress)
        todo = [j for j, k in zip(jobs, keys) if k not in done]
        print(
            f"{len(jobs)} runs ({args.methods} x seeds {seeds} x labeled {labeled}), {args.jobs} at a time; each "
            f"finished run is appended to {progress}"
            + (f"; {len(jobs) - len(todo)} already recorded there are not re-run" if len(todo) < len(jobs) else "")
            + " ...",
            flush=True,
        )
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            fresh = dict(zip([id(j) for j in todo], pool.map(_run_one, todo)))
        runs = [done[k] if k in done else fresh[id(j)] for j, k in zip(jobs, keys)]
    name = args.name + ("_quick" if args.quick else "")
    _write(name, runs, args, {"jobs": args.jobs, "wall_s": round(time.time() - t0)}, iterations or 400)


def _write(name: str, runs: list[dict], args: argparse.Namespace, extra: dict, iterations: int) -> None:
    from benchmarks.harness import RESULTS, machine_info
    from mona.atomicio import atomic_write_text

    rows = summarise(runs)
    command = "python -m benchmarks.bench_semi_supervised " + " ".join(sys.argv[1:])
    meta = {
        **machine_info("cpu"),
        "torch_threads": 1,
        **extra,
        "overrides": args.overrides,
        "size": args.size,
        "tail": args.tail,
        "command": command,
        "iterations_note": f"Budget {iterations} training iterations per run (two-stage methods: stage 1 before them, 100 per 400)",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / name
    atomic_write_text(out.with_suffix(".json"), json.dumps({"runs": runs, "summary": rows, "meta": meta}, indent=1))
    atomic_write_text(out.with_suffix(".md"), markdown(rows, meta, command, runs, args.also_vs))
    for r in rows:
        vb = r.get("vs_baseline")
        extra_s = f", vs {BASELINE} {_fmt(vb['mean_dice'], True)} ({vb['wins']}/{vb['seeds']} wins)" if vb else ""
        print(f"{r['labeled']} labeled, {r['method']}: {_fmt(r['mean_dice'])}{extra_s}")
    print(f"-> {out}.json, {out}.md (wall {meta['wall_s']} s)")


if __name__ == "__main__":
    main()
