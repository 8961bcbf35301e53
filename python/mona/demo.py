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
labeled, 2 val, 4 test = 8 test volumes) prepared at 96 x 96, 400 iterations each (MONA: 100 GLCon +
300 fine-tuning), batch 8, 1 CPU thread per run. :func:`compare` is the same comparison as a function;
``benchmarks/bench_semi_supervised.py`` runs every method over seeds.
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
from .train.loop import select_device

METHOD_LABELS = {
    "supervised": "supervised (weak aug.)",
    "supervised_strong": "supervised (strong aug.)",
    "mona": "GLCon + MONA",
}
METHODS = tuple(METHOD_LABELS)
SHORT = {"supervised": "sup", "supervised_strong": "strong", "mona": "MONA"}


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


def comparison_table(reports: dict) -> str:
    """Per-class Dice of the three methods, the two differences that matter (MONA - supervised with weak
    augmentation: what the demo used to show; MONA - supervised with the student's strong augmentation:
    the part the unlabeled data adds), then ASD / HD95 per method."""
    sup, strong, mona = (reports[m] for m in METHODS)
    head = (
        f"{'class':<10}{'Dice sup':>10}{'strong':>9}{'MONA':>9}{'MONA-sup':>10}{'MONA-strong':>13}"
        f"{'ASD sup':>9}{'strong':>8}{'MONA':>8}{'HD95 sup':>10}{'strong':>8}{'MONA':>8}"
    )
    lines = [head, "-" * len(head)]
    for name in sup.summary:
        a, b, c = sup.summary[name], strong.summary[name], mona.summary[name]
        lines.append(
            f"{name:<10}{a['dice']:>10.4f}{b['dice']:>9.4f}{c['dice']:>9.4f}{c['dice'] - a['dice']:>+10.4f}"
            f"{c['dice'] - b['dice']:>+13.4f}{a['asd']:>9.2f}{b['asd']:>8.2f}{c['asd']:>8.2f}"
            f"{a['hd95']:>10.2f}{b['hd95']:>8.2f}{c['hd95']:>8.2f}"
        )
    lines.append("-" * len(head))
    lines.append(
        f"{'mean':<10}{sup.mean_dice:>10.4f}{strong.mean_dice:>9.4f}{mona.mean_dice:>9.4f}"
        f"{mona.mean_dice - sup.mean_dice:>+10.4f}{mona.mean_dice - strong.mean_dice:>+13.4f}"
        f"   (ASD / HD95 in mm; Dice: mean over the test volumes)"
    )
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
    log=print,
) -> dict:
    """Supervised (weak augmentation), supervised with the MONA student's augmentation, and GLCon + MONA on
    phantoms (``tail``: with the long-tail class PM); returns the summary written to ``out_dir/report/summary.json``.

    ``iterations``: the total budget of each method (default: the packaged demo configs', 400);
    MONA spends ``pretrain_iterations`` of it in GLCon (default: the packaged share, a quarter). ``seed``: phantom seed;
    ``train_seed``: the training seed of both runs. ``overrides`` apply to both training configs.
    ``overlays``: how many test volumes get overlays (default: every one); ``overlay_slices``: slices per
    volume (the ones with the most ground-truth foreground). The configs, the budget, the device and
    these numbers are checked before anything is written to ``out_dir``.
    """
    from .train import load_config, run_stages

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
    mona_cfg = load_config(_packaged("demo_mona"), common + [f"out_dir={out / 'mona'}"] + list(overrides or []))
    packaged_total = mona_cfg.pretrain_iterations + mona_cfg.iterations
    budget = iterations if iterations is not None else packaged_total
    # default: GLCon takes the packaged configs' share of the budget (100 of 400)
    pre = (
        pretrain_iterations
        if pretrain_iterations is not None
        else round(budget * mona_cfg.pretrain_iterations / packaged_total)
    )
    if not 0 <= pre < budget:
        raise UsageError(f"demo: pretrain_iterations must be in 0..{budget - 1} (the budget), got {pre}")
    mona_cfg = load_config(
        _packaged("demo_mona"),
        common
        + [f"out_dir={out / 'mona'}", f"iterations={budget - pre}", f"pretrain_iterations={pre}"]
        + list(overrides or []),
    )
    sup_cfg = load_config(
        _packaged("demo"), common + [f"out_dir={out / 'supervised'}", f"iterations={budget}"] + list(overrides or [])
    )
    # the fair baseline: the semi-supervised student's augmentation, the same labeled batch, no unlabeled data
    strong_cfg = load_config(
        _packaged("demo"),
        common
        + [f"out_dir={out / 'supervised_strong'}", f"iterations={budget}", "method=supervised_strong"]
        + list(overrides or []),
    )
    cfgs = {"supervised": sup_cfg, "supervised_strong": strong_cfg, "mona": mona_cfg}

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
    steps = {
        "supervised": f"[3/6] supervised baseline, weak augmentation (flip, rotation, crop): {budget} iterations, batch "
        f"{sup_cfg.data.batch_size} labeled slices of {labeled_patients} labeled patient(s) -> {sup_cfg.out_dir}",
        "supervised_strong": f"[4/6] supervised baseline with the MONA student's augmentation (+ contrast, brightness): "
        f"{budget} iterations, batch {strong_cfg.data.batch_size} labeled -> {strong_cfg.out_dir}",
        "mona": f"[5/6] GLCon ({pre} iterations) + MONA ({budget - pre} iterations), batch {mona_cfg.labeled_bs} labeled + "
        f"{mona_cfg.data.batch_size - mona_cfg.labeled_bs} unlabeled; demo scale: {mona_cfg.model.embed_dim}-d "
        f"embeddings, representation stride {mona_cfg.model.rep_stride}, {mona_cfg.mona.num_queries} queries x "
        f"{mona_cfg.mona.num_negatives} negatives, {mona_cfg.glcon.mined_views} mined views -> {mona_cfg.out_dir}",
    }
    for name in METHODS:
        t = time.time()
        log(steps[name])
        results[name] = run_stages(cfgs[name], progress=progress)[-1]
        timings[f"train_{name}_s"] = time.time() - t

    t = time.time()
    log(f"[6/6] evaluating the three kept models on the {n_test} held-out test patients (original geometry)")
    reports = {}
    for name in METHODS:
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
        preds = {METHOD_LABELS[n]: reports[n].predictions[case["case_id"]] for n in METHODS}
        overlay_paths += write_volume_overlays(vol, preds, rep / "overlays", sc.class_names, overlay_slices)
    curve = comparison_curves(
        {
            METHOD_LABELS["supervised"]: [(sup_cfg.out_dir, 0)],
            METHOD_LABELS["supervised_strong"]: [(strong_cfg.out_dir, 0)],
            "GLCon (stage 1)": [(Path(mona_cfg.out_dir) / "pretrain_glcon", 0)],
            "MONA (stage 2)": [(mona_cfg.out_dir, pre)],
        },
        rep / "validation_curves.png",
    )
    timings["evaluate_s"] = time.time() - t
    timings["total_s"] = time.time() - t0
    diff = reports["mona"].mean_dice - reports["supervised"].mean_dice
    diff_strong = reports["mona"].mean_dice - reports["supervised_strong"].mean_dice
    summary = {
        "command": "mona demo",
        "machine": machine_description(),
        "torch_threads_per_run": sup_cfg.threads,
        "phantom_seed": seed,
        "train_seed": train_seed,
        "labeled_patients": labeled_patients,
        "tail": tail,
        "iterations": budget,
        "pretrain_iterations": pre,
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
            for name in METHODS
        },
        # MONA - supervised (weak augmentation) = augmentation + unlabeled data; MONA - supervised_strong =
        # what the unlabeled data adds on top of the same augmentation
        "mean_dice_difference": diff,
        "mean_dice_difference_strong": diff_strong,
        "timings_s": timings,
    }
    atomic_write_json(rep / "summary.json", summary)
    log("")
    log(comparison_table(reports))
    log("")
    log(
        f"mean foreground Dice on {len(reports['mona'].predictions)} held-out test volumes: supervised "
        f"{reports['supervised'].mean_dice:.4f}, supervised with strong augmentation "
        f"{reports['supervised_strong'].mean_dice:.4f}, GLCon + MONA {reports['mona'].mean_dice:.4f}"
    )
    log(
        f"MONA - supervised {diff:+.4f} = augmentation {reports['supervised_strong'].mean_dice - reports['supervised'].mean_dice:+.4f}"
        f" + unlabeled data {diff_strong:+.4f} (one seed: see benchmarks/results/semi_supervised.md for 5)"
    )
    log(
        f"wall time: {timings['total_s']:.0f} s ("
        + ", ".join(f"{SHORT[n]} {timings[f'train_{n}_s']:.0f} s" for n in METHODS)
        + f") on {summary['machine']}; results vary with the CPU / BLAS"
    )
    log(f"report:     {rep / 'summary.json'}  (+ {', '.join(METHODS)}/ metrics.json, metrics.csv)")
    log(
        f"overlays:   {rep / 'overlays'}  ({len(overlay_paths)} PNGs: up to {overlay_slices} slices of each of "
        f"{len(overlay_volumes)} test volumes, ground truth and the three methods on the same slice)"
    )
    log(f"curves:     {curve}")
    log(f"models:     {', '.join(str(Path(cfgs[n].out_dir) / 'model.pt') for n in METHODS)}")
    return summary


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
    )
