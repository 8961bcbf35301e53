"""``mona demo``: the semi-supervised story on synthetic phantoms, on a CPU, in minutes.

1. phantoms (ACDC layout, with the long-tail class PM) -> 2. slice cache -> 3. the supervised baseline
(weak augmentation) on the labeled patient(s) alone -> 4. the same with the MONA student's augmentation
(``supervised_strong``: the fair baseline) -> 5. GLCon pre-training + MONA fine-tuning on the same labeled
patient(s) plus the other train patients unlabeled, with the same total number of iterations -> 6. the
three evaluated on the held-out test phantoms in their original geometry: per-class Dice / ASD / HD95 side
by side with the two differences (MONA - supervised = augmentation + unlabeled data; MONA -
supervised_strong = the unlabeled data's part), overlays of the three on the same slices (the 3 slices with
the most ground-truth foreground of every test volume, with a colour legend of the classes), validation
curves, ``summary.json``. Everything is checked (configs, overrides, budget, device) before anything is
written.

Defaults (``configs/demo.yaml``, ``configs/demo_mona.yaml``): 14 phantom patients (8 train of which 1
labeled, 2 val, 4 test = 8 test volumes) prepared at 96 x 96, 400 training iterations each (MONA: 100
GLCon pre-training, then 400 fine-tuning, as the paper fine-tunes for the supervised schedule), batch 8,
1 CPU thread per run. On a CPU with two or more usable cores the runs train
concurrently, one process per core (``--jobs``, :mod:`mona.runs`), the longest first, with one combined
progress display; the results are the same as one after another. :func:`compare` is the same comparison
as a function; ``benchmarks/bench_semi_supervised.py`` runs every method over seeds.

``methods`` (``mona demo --methods supervised,mona,unimatch``) runs any subset of :data:`DEMO_METHODS`
(supervised, supervised_strong, mean_teacher, mona, unimatch, bcp) on the same phantoms, budget and
evaluation; the table then shows every method that is not a baseline against each baseline that ran.
"""

from __future__ import annotations

import os
import platform
import time
from importlib import resources
from pathlib import Path

import torch

from .data.dataset import SliceCache
from .data.prepare import atomic_write_json, prepare
from .data.readers import CaseRecord, load_case
from .data.synth import SynthConfig, synth_patient_ids, write_phantoms
from .errors import UsageError
from .eval.report import (
    OVERLAY_SLICES,
    comparison_curves,
    evaluate_cache,
    prepare_matplotlib,
    spec_from_manifest,
    write_report,
    write_volume_overlays,
)
from .train.checkpoint import load_model
from .train.config import PRETRAIN_STAGES
from .train.loop import select_device

#: every method the demo can run -> (label, short column name, packaged config, overrides). The
#: semi-supervised methods train on the demo's MONA config (batch 8 labeled + 8 unlabeled: the labeled half
#: is the supervised runs' whole batch; the same augmentation); the two-stage ones (GLCon + MONA, BCP) run
#: their stage 1 before a stage 2 as long as the supervised runs (the packaged ratio, 100 per 400).
#: ``benchmarks/bench_semi_supervised.py`` runs the same configs over seeds.
DEMO_METHODS: dict[str, tuple[str, str, str, list[str]]] = {
    "supervised": ("supervised (weak aug.)", "sup", "demo", ["method=supervised"]),
    "supervised_strong": ("supervised (strong aug.)", "strong", "demo", ["method=supervised_strong"]),
    "mean_teacher": ("mean teacher", "MT", "demo_mona", ["method=mean_teacher", "pretrain_iterations=0"]),
    "mona": ("GLCon + MONA", "MONA", "demo_mona", []),
    "unimatch": ("UniMatch", "UniMatch", "demo_mona", ["method=unimatch", "pretrain_iterations=0"]),
    "bcp": ("BCP", "BCP", "demo_mona", ["method=bcp"]),
}
#: what ``mona demo`` runs unless ``--methods`` says otherwise
METHODS = ("supervised", "supervised_strong", "mona")
METHOD_LABELS = {m: v[0] for m, v in DEMO_METHODS.items()}
SHORT = {m: v[1] for m, v in DEMO_METHODS.items()}
BASELINES = ("supervised", "supervised_strong")


def stage1_iterations(budget: int, cfg) -> int:
    """Stage 1 (GLCon, BCP's copy-paste pre-training) before a stage 2 of ``budget`` iterations, in the
    ratio of the packaged ``cfg`` (``demo_mona``: 100 per 400)."""
    return round(budget * cfg.pretrain_iterations / cfg.iterations)


def parse_methods(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``"supervised,mona,unimatch"`` (or a list) -> the demo's methods in that order; an unknown or
    repeated name is an error naming the valid ones."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    if not names:
        raise UsageError(f"demo: --methods names no method; choose from {', '.join(DEMO_METHODS)}")
    unknown = [n for n in names if n not in DEMO_METHODS]
    if unknown:
        raise UsageError(f"demo: unknown method(s) {unknown} in --methods; choose from {', '.join(DEMO_METHODS)}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UsageError(f"demo: --methods names {repeated} more than once")
    return tuple(names)


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__}"


def packaged_config(name: str) -> str:
    """The path of the packaged config ``name`` (``demo``, ``demo_mona``, ``acdc_mona``, ...)."""
    return str(resources.files("mona").joinpath(f"configs/{name}.yaml"))


_packaged = packaged_config


def _differences(methods: tuple[str, ...]) -> list[tuple[str, str]]:
    """(method, baseline) pairs the demo reports: every other method against each baseline it ran."""
    return [(m, b) for m in methods if m not in BASELINES for b in BASELINES if b in methods] + (
        [("supervised_strong", "supervised")] if set(BASELINES) <= set(methods) and len(methods) == 2 else []
    )


def comparison_table(reports: dict, methods: tuple[str, ...] = METHODS) -> str:
    """Per-class Dice of the methods side by side, the differences that matter (a method - supervised with
    weak augmentation: augmentation + unlabeled data; a method - supervised with the student's strong
    augmentation: the part the unlabeled data adds), then ASD / HD95 per method."""
    reps = [reports[m] for m in methods]
    diffs = _differences(methods)

    def group(prefix: str, names: list[str]) -> list[tuple[str, int]]:
        """Header cells of one column group (the prefix on its first) with their widths."""
        labels = [(f"{prefix} " if prefix and i == 0 else "") + n for i, n in enumerate(names)]
        return [(label, max(9, len(label) + 2)) for label in labels]

    shorts = [SHORT[m] for m in methods]
    dice_c, diff_c = group("Dice", shorts), group("", [f"{SHORT[m]}-{SHORT[b]}" for m, b in diffs])
    asd_c, hd_c = group("ASD", shorts), group("HD95", shorts)
    head = f"{'class':<10}" + "".join(f"{label:>{w}}" for label, w in dice_c + diff_c + asd_c + hd_c)
    lines = [head, "-" * len(head)]

    def row(label, dice, dist=None):
        cells = f"{label:<10}" + "".join(f"{d:>{w}.4f}" for d, (_, w) in zip(dice, dice_c))
        cells += "".join(
            f"{dice[methods.index(m)] - dice[methods.index(b)]:>+{w}.4f}" for (m, b), (_, w) in zip(diffs, diff_c)
        )
        if dist is not None:
            for key, cols in (("asd", asd_c), ("hd95", hd_c)):
                cells += "".join(f"{s[key]:>{w}.2f}" for s, (_, w) in zip(dist, cols))
        return cells

    for name in reps[0].summary:
        per = [r.summary[name] for r in reps]
        lines.append(row(name, [s["dice"] for s in per], per))
    lines.append("-" * len(head))
    lines.append(row("mean", [r.mean_dice for r in reps]) + "   (ASD / HD95 in mm; Dice: mean over the test volumes)")
    return "\n".join(lines)


def _method_summary(report) -> dict:
    return {
        "mean_dice": report.mean_dice,
        "dice": {name: s["dice"] for name, s in report.summary.items()},
        "per_class": report.summary,
    }


def compare(
    out_dir: str | Path,
    *,
    iterations: int | None = None,
    pretrain_iterations: int | None = None,
    seed: int = 0,
    train_seed: int = 1337,
    labeled_patients: int = 1,
    n_train: int = 8,
    n_val: int = 2,
    n_test: int = 4,
    size: int = 96,
    device: str = "auto",
    progress: bool = True,
    overrides: list[str] | None = None,
    overlays: int | None = None,
    overlay_slices: int = OVERLAY_SLICES,
    tail: bool = True,
    methods: str | list[str] | tuple[str, ...] = METHODS,
    jobs: int | None = None,
    log=print,
) -> dict:
    """Supervised (weak augmentation), supervised with the MONA student's augmentation, and GLCon + MONA on
    phantoms (``tail``: with the long-tail class PM); returns the summary written to ``out_dir/report/summary.json``.

    ``iterations``: the training schedule of every method (default: the packaged demo configs', 400), the
    fine-tuning stage of the two-stage ones; MONA (BCP) runs ``pretrain_iterations`` of GLCon (copy-paste
    pre-training) before it (default: the packaged ratio, 100 per 400). ``seed``: phantom seed;
    ``train_seed``: the training seed of both runs. ``overrides`` apply to both training configs.
    ``overlays``: how many test volumes get overlays (default: every one); ``overlay_slices``: slices per
    volume (the ones with the most ground-truth foreground). ``jobs``: how many methods train at once,
    each in its own process (default :func:`mona.runs.default_jobs`: one per usable CPU core on a CPU, at
    most one per method; 1 on a GPU); 1 trains them one after another in this process. The results do
    not depend on it (every run is seeded, at its config's one torch thread). The configs, the budget,
    the device and these numbers are checked before anything is written to ``out_dir``.
    """
    from .runs import check_jobs, default_jobs
    from .train import load_config, run_stages

    methods = parse_methods(methods)
    check_jobs(jobs)
    prepare_matplotlib()  # builds matplotlib's font cache now (first run), not inside a progress bar

    t0 = time.time()
    out = Path(out_dir)
    raw, cache, rep = out / "raw", out / "cache", out / "report"
    if overlays is not None and overlays < 0:
        raise UsageError(f"demo: overlays (test volumes with overlays) must be >= 0, got {overlays}")
    if overlay_slices < 1:
        raise UsageError(f"demo: overlay_slices must be >= 1, got {overlay_slices}")
    if size < 16:
        raise UsageError(f"demo: size must be >= 16, got {size}")
    if n_test < 1:
        raise UsageError(f"demo: n_test must be >= 1 (the evaluation needs test patients), got {n_test}")
    if not 1 <= labeled_patients < n_train:
        raise UsageError(
            f"demo: labeled_patients must be in 1..{n_train - 1} (MONA needs unlabeled train patients; "
            f"{n_train} train patients), got {labeled_patients}"
        )
    synth_cfg = SynthConfig(n_train=n_train, n_val=n_val, n_test=n_test, seed=seed, tail=tail)
    synth_patient_ids(n_train, n_val, n_test)  # checks the counts
    dev = select_device(device)

    common = [
        f"data.cache={cache}",
        f"device={device}",
        f"seed={train_seed}",
        f"data.labeled_patients={labeled_patients}",
    ]
    user = list(overrides or [])
    mona_cfg = load_config(_packaged("demo_mona"), common + [f"out_dir={out / 'mona'}"] + user)
    budget = iterations if iterations is not None else mona_cfg.iterations
    if budget < 1:
        raise UsageError(f"demo: iterations must be >= 1, got {budget}")
    # stage 1 (GLCon, BCP's pre-training) comes before a stage 2 of the whole schedule (the paper's protocol:
    # fine-tuning as long as the supervised run); default: the packaged ratio (100 per 400)
    pre = pretrain_iterations if pretrain_iterations is not None else stage1_iterations(budget, mona_cfg)
    if pre < 0:
        raise UsageError(f"demo: pretrain_iterations must be >= 0, got {pre}")
    cfgs, pres, specs = {}, {}, {}
    for name in methods:
        _, _, packaged, method_ovs = DEMO_METHODS[name]
        base = common + [f"out_dir={out / name}"] + method_ovs
        probe = load_config(_packaged(packaged), base + user)
        two_stage = probe.method in PRETRAIN_STAGES and probe.pretrain_iterations > 0 and pre > 0
        pres[name] = pre if two_stage else 0
        budget_ovs = [f"iterations={budget}"]
        if probe.method in PRETRAIN_STAGES:
            budget_ovs.append(f"pretrain_iterations={pres[name]}")
        specs[name] = (_packaged(packaged), base + budget_ovs + user)
        cfgs[name] = load_config(*specs[name])
    n_jobs = min(len(methods), jobs if jobs is not None else default_jobs(len(methods), dev.type))

    timings: dict[str, float] = {}
    dataset = "phantom" if tail else "acdc"
    log(
        f"[1/6] synthesising {n_train + n_val + n_test} phantom patients (ACDC layout, seed {seed}"
        f"{', with the long-tail class PM' if tail else ''}) -> {raw}"
    )
    write_phantoms(raw, synth_cfg, progress=progress)
    timings["synth_s"] = time.time() - t0
    t = time.time()
    log(f"[2/6] preparing the slice cache at {size} x {size} ({dataset}) -> {cache}")
    prepare(dataset, raw, cache, size=size, progress=progress)
    timings["prepare_s"] = time.time() - t

    results = {}
    n_steps = 3 + len(methods)

    def describe(name: str, cfg) -> str:
        c = cfg
        if name == "supervised":
            what = f"supervised baseline, weak augmentation (flip, rotation, crop): {budget} iterations"
        elif name == "supervised_strong":
            what = f"supervised baseline with the semi-supervised student's augmentation (+ contrast, brightness): {budget} iterations"
        elif pres[name]:
            stage1 = PRETRAIN_STAGES[c.method][0]
            what = f"{METHOD_LABELS[name]}: {stage1} ({pres[name]} iterations) + {c.method} ({c.iterations} iterations)"
        else:
            what = f"{METHOD_LABELS[name]}: {c.iterations} iterations"
        if c.method in ("supervised", "supervised_strong"):
            batch = f"batch {c.data.batch_size} labeled slices of {labeled_patients} labeled patient(s)"
        else:
            batch = f"batch {c.labeled_bs} labeled + {c.data.batch_size - c.labeled_bs} unlabeled"
        if c.method == "mona":
            batch += (
                f"; demo scale: {c.model.embed_dim}-d embeddings, representation stride {c.model.rep_stride}, "
                f"{c.mona.num_queries} queries x {c.mona.num_negatives} negatives, {c.glcon.mined_views} mined views"
            )
        return f"{what}, {batch} -> {c.out_dir}"

    t_train = time.time()
    if n_jobs == 1:
        for i, name in enumerate(methods):
            t = time.time()
            log(f"[{3 + i}/{n_steps}] " + describe(name, cfgs[name]))
            results[name] = run_stages(cfgs[name], progress=progress)[-1]
            timings[f"train_{name}_s"] = time.time() - t
    else:
        for i, name in enumerate(methods):
            log(f"[{3 + i}/{n_steps}] " + describe(name, cfgs[name]))
        results = _train_concurrently(methods, cfgs, specs, n_jobs, out, progress, timings, log)
        if cfgs[methods[0]].threads:  # the evaluation below at the runs' thread count, as after in-process runs
            torch.set_num_threads(cfgs[methods[0]].threads)
    timings["train_s"] = time.time() - t_train

    t = time.time()
    log(
        f"[{n_steps}/{n_steps}] evaluating the {len(methods)} kept model(s) on the {n_test} held-out test patients "
        "(original geometry)"
    )
    reports = {}
    for name in methods:
        run_dir = Path(cfgs[name].out_dir)
        model, meta = load_model(run_dir / "model.pt", dev)
        reports[name] = evaluate_cache(
            model, meta, cache, split="test", device=dev, progress=progress, keep_predictions=True
        )
        write_report(
            reports[name],
            rep / name,
            extra={"method": name, "run": str(run_dir), "model": results[name].best_model},
        )
    sc = SliceCache(cache)
    spec = spec_from_manifest(sc.manifest)
    overlay_paths, overlay_volumes = [], sc.cases_of_patients(sc.splits["test"])[:overlays]
    for ci in overlay_volumes:
        case = sc.cases[ci]
        vol = load_case(
            CaseRecord(case["case_id"], case["patient_id"], case["image_path"], case["label_path"], case["extra"]), spec
        )
        preds = {METHOD_LABELS[n]: reports[n].predictions[case["case_id"]] for n in methods}
        overlay_paths += write_volume_overlays(vol, preds, rep / "overlays", sc.class_names, overlay_slices)
    curves: dict[str, list] = {}
    for name in methods:
        c = cfgs[name]
        if pres[name]:
            curves[f"{METHOD_LABELS[name]} (stage 1)"] = [(Path(c.out_dir) / PRETRAIN_STAGES[c.method][1], 0)]
            curves[f"{METHOD_LABELS[name]} (stage 2)"] = [(c.out_dir, pres[name])]
        else:
            curves[METHOD_LABELS[name]] = [(c.out_dir, 0)]
    curve = comparison_curves(curves, rep / "validation_curves.png")
    timings["evaluate_s"] = time.time() - t
    timings["total_s"] = time.time() - t0
    differences = {f"{m} - {b}": reports[m].mean_dice - reports[b].mean_dice for m, b in _differences(methods)}
    first = cfgs[methods[0]]
    summary = {
        "command": "mona demo",
        "machine": machine_description(),
        "methods": list(methods),
        "jobs": n_jobs,
        "torch_threads_per_run": first.threads,
        "phantom_seed": seed,
        "train_seed": train_seed,
        "labeled_patients": labeled_patients,
        "tail": tail,
        "iterations": budget,
        "pretrain_iterations": max(pres.values()),
        "size": size,
        "demo_scale": {
            "embed_dim": mona_cfg.model.embed_dim,
            "rep_stride": mona_cfg.model.rep_stride,
            "num_queries": mona_cfg.mona.num_queries,
            "num_negatives": mona_cfg.mona.num_negatives,
            "mined_views": mona_cfg.glcon.mined_views,
            "local_crops": mona_cfg.glcon.local_crops,
        },
        **{
            name: {
                **_method_summary(reports[name]),
                "best_iteration": results[name].best_iteration,
                "best_val_dice": results[name].best_dice,
                "model": results[name].best_model,
            }
            for name in methods
        },
        # a method - supervised (weak augmentation) = augmentation + unlabeled data; a method -
        # supervised_strong = what the unlabeled data adds on top of the same augmentation
        "differences": differences,
        "timings_s": timings,
    }
    if "mona" in methods:  # the keys of the three-method demo (mona <= 0.4)
        for b, key in (("supervised", "mean_dice_difference"), ("supervised_strong", "mean_dice_difference_strong")):
            if b in methods:
                summary[key] = differences[f"mona - {b}"]
    atomic_write_json(rep / "summary.json", summary)
    log("")
    log(comparison_table(reports, methods))
    log("")
    log(
        f"mean foreground Dice on {len(reports[methods[0]].predictions)} held-out test volumes: "
        + ", ".join(f"{METHOD_LABELS[n]} {reports[n].mean_dice:.4f}" for n in methods)
    )
    for m in methods:
        if m in BASELINES:
            continue
        if set(BASELINES) <= set(methods):
            aug = reports["supervised_strong"].mean_dice - reports["supervised"].mean_dice
            log(
                f"{SHORT[m]} - supervised {differences[f'{m} - supervised']:+.4f} = augmentation {aug:+.4f}"
                f" + unlabeled data {differences[f'{m} - supervised_strong']:+.4f} (one seed: see "
                "benchmarks/results/all_methods.md for 5-10)"
            )
        else:
            log(", ".join(f"{SHORT[m]} - {b} {differences[f'{m} - {b}']:+.4f}" for b in BASELINES if b in methods))
    log(
        f"wall time: {timings['total_s']:.0f} s (training {timings['train_s']:.0f} s"
        + (f", {n_jobs} runs at once: " if n_jobs > 1 else ": ")
        + ", ".join(f"{SHORT[n]} {timings[f'train_{n}_s']:.0f} s" for n in methods)
        + f") on {summary['machine']}; results vary with the CPU / BLAS"
    )
    log(f"report:     {rep / 'summary.json'}  (+ {', '.join(methods)}/ metrics.json, metrics.csv)")
    log(
        f"overlays:   {rep / 'overlays'}  ({len(overlay_paths)} PNGs: up to {overlay_slices} slices of each of "
        f"{len(overlay_volumes)} test volumes, ground truth and the {len(methods)} method(s) on the same slice)"
    )
    log(f"curves:     {curve}")
    log(f"models:     {', '.join(str(Path(cfgs[n].out_dir) / 'model.pt') for n in methods)}")
    return summary


def schedule(methods: tuple[str, ...], cfgs: dict) -> list[str]:
    """The order concurrent runs start in: the longest first (the semi-supervised methods, two-stage ones
    before the others; the supervised baselines last), so that the wall time is about
    max(longest, the others' sum / (jobs - 1)); the given order among equals."""

    def key(name: str) -> tuple[int, int]:
        c = cfgs[name]
        return (c.method in BASELINES, not (c.method in PRETRAIN_STAGES and c.pretrain_iterations > 0))

    return sorted(methods, key=key)


def _train_concurrently(methods, cfgs, specs, n_jobs, out, progress, timings, log) -> dict:
    """Every method's training in its own ``python -m mona.runs`` child, ``n_jobs`` at once, the longest
    first, with one progress display; {method: result with best_model, best_iteration, best_dice}."""
    from types import SimpleNamespace

    from .runs import JobFailed, failure, read_result, run_jobs, train_job
    from .train.pipeline import stages

    order = schedule(methods, cfgs)
    work = out / "logs"
    jobs = [
        train_job(
            name,
            SHORT[name],
            *specs[name],
            [(s.out_dir, s.iterations) for s in stages(cfgs[name])],
            work,
        )
        for name in order
    ]
    log(
        f"training the {len(jobs)} runs {n_jobs} at a time, each in its own process with "
        f"{cfgs[methods[0]].threads or 'the default number of'} torch thread(s), the longest first "
        f"({', '.join(SHORT[n] for n in order)}); logs in {work}"
    )
    try:
        walls = run_jobs(jobs, n_jobs, progress=progress, log=log)
    except JobFailed as err:
        raise failure(err.job, err) from None
    results = {}
    for name in methods:
        timings[f"train_{name}_s"] = walls[name]
        results[name] = SimpleNamespace(**read_result(next(j for j in jobs if j.name == name)))
    return results


def run_demo(
    out_dir: str | Path = "runs/demo",
    *,
    iterations: int | None = None,
    pretrain_iterations: int | None = None,
    seed: int = 0,
    size: int = 96,
    device: str = "auto",
    progress: bool = True,
    overrides: list[str] | None = None,
    labeled_patients: int = 1,
    overlays: int | None = None,
    overlay_slices: int = OVERLAY_SLICES,
    tail: bool = True,
    methods: str | list[str] | tuple[str, ...] = METHODS,
    jobs: int | None = None,
) -> dict:
    """``mona demo``: :func:`compare` with the packaged demo settings."""
    return compare(
        out_dir,
        iterations=iterations,
        pretrain_iterations=pretrain_iterations,
        seed=seed,
        size=size,
        device=device,
        progress=progress,
        overrides=overrides,
        labeled_patients=labeled_patients,
        overlays=overlays,
        overlay_slices=overlay_slices,
        tail=tail,
        methods=methods,
        jobs=jobs,
    )
