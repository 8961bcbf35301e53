"""Evaluation reports: per-volume, per-class metrics on the original volumes, tables, CSV/JSON,
PNG overlays and the learning curve."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..atomicio import atomic_write, atomic_write_text
from ..data.dataset import SliceCache
from ..data.prepare import atomic_write_json
from ..data.readers import CaseRecord, DatasetSpec, Volume, load_case
from ..errors import DataError, UsageError
from .inference import predict_volume
from .metrics import nan_summary, volume_metrics

CONVENTIONS = (
    "Dice/ASD/HD95 per foreground class on the original 3-D volume. ASD and HD95 follow medpy "
    "(surfaces by binary erosion, connectivity 1; ASD = mean of the pooled distances of both "
    "directions; HD95 = 95th percentile of them), in mm using the header spacing (or voxels). "
    "Both masks empty: Dice 1, ASD 0, HD95 0. One empty: Dice 0, ASD/HD95 NaN, excluded from the "
    "mean; n_dist counts the volumes that entered the ASD/HD95 means."
)
OVERLAY_SLICES = 3  # slices per volume in the overlays of `mona evaluate` and `mona demo`


def spec_from_manifest(man: dict) -> DatasetSpec:
    norm = man["normalisation"]
    return DatasetSpec(
        man["dataset"],
        tuple(man["class_names"]),
        man["modality"],
        tuple(man["label_values"]) if man.get("label_values") else None,
        (norm["low"], norm["high"]) if norm["kind"] == "hu_window" else None,
    )


@dataclass
class EvalReport:
    class_names: list[str]
    rows: list[dict] = field(default_factory=list)  # one per (case, class)
    summary: dict = field(default_factory=dict)  # per class name: means and counts
    mean_dice: float = float("nan")
    unit: str = "mm"
    predictions: dict = field(default_factory=dict)  # case_id -> label volume (keep_predictions=True)
    overlays: list = field(default_factory=list)  # PNG paths written (overlay_dir given)

    def table(self) -> str:
        u = self.unit
        head = f"{'class':<12}{'Dice':>8}{'ASD ' + u:>12}{'HD95 ' + u:>12}{'n_dist':>8}"
        lines = [head, "-" * len(head)]
        for name, s in self.summary.items():
            lines.append(f"{name:<12}{s['dice']:>8.4f}{s['asd']:>12.3f}{s['hd95']:>12.3f}{s['n_dist']:>8d}")
        lines.append("-" * len(head))
        fg = list(self.summary.values())
        mean_asd = nan_summary([s["asd"] for s in fg])[0]
        mean_hd = nan_summary([s["hd95"] for s in fg])[0]
        lines.append(f"{'mean':<12}{self.mean_dice:>8.4f}{mean_asd:>12.3f}{mean_hd:>12.3f}")
        return "\n".join(lines)


def evaluate_cache(
    model: torch.nn.Module,
    meta: dict,
    cache_dir: str | Path,
    *,
    split: str = "test",
    device: str | torch.device = "cpu",
    voxels: bool = False,
    overlay_dir: str | Path | None = None,
    max_overlays: int | None = None,
    overlay_slices: int = OVERLAY_SLICES,
    progress: bool = True,
    keep_predictions: bool = False,
) -> EvalReport:
    """Segment every volume of ``split`` of a prepared cache from its *raw* files (original geometry)
    and compute the metrics at the header spacing (``voxels=True``: also in voxels).

    ``overlay_dir``: also write PNG overlays (image, ground truth, prediction, class legend) of the
    ``overlay_slices`` slices with the most ground-truth foreground of every volume (``max_overlays``:
    of the first that many volumes only), as ``overlay_dir/<case_id>_z<z>.png``."""
    if overlay_dir is not None and overlay_slices < 1:
        raise UsageError(f"evaluate: overlay_slices must be >= 1, got {overlay_slices}")
    if max_overlays is not None and max_overlays < 0:
        raise UsageError(f"evaluate: max_overlays must be >= 0, got {max_overlays}")
    cache = SliceCache(cache_dir)
    if split not in cache.splits:
        raise ValueError(f"evaluate: unknown split {split!r}; the cache has {sorted(cache.splits)}")
    if not cache.splits[split]:
        raise DataError(f"{cache.root}: split {split!r} of the cache is empty")
    if list(meta["class_names"]) != list(cache.class_names):
        raise DataError(
            f"checkpoint: model classes {meta['class_names']} ({len(meta['class_names'])}) differ from the "
            f"classes of the cache {cache.root}: {cache.class_names} ({len(cache.class_names)})"
        )
    spec = spec_from_manifest(cache.manifest)
    report = EvalReport(list(cache.class_names))
    per_class: dict[int, list] = {c: [] for c in range(1, len(cache.class_names))}
    cases = [cache.cases[i] for i in cache.cases_of_patients(cache.splits[split])]
    if overlay_dir is not None:
        prepare_matplotlib()  # its first-run font-cache message must not land inside the progress bar
    for k, case in enumerate(tqdm(cases, desc=f"evaluate {split}", disable=not progress, unit="vol")):
        rec = CaseRecord(case["case_id"], case["patient_id"], case["image_path"], case["label_path"], case["extra"])
        vol = load_case(rec, spec)
        assert vol.label is not None
        pred = predict_volume(model, vol.image, normalisation=meta["normalisation"], size=meta["size"], device=device)
        if keep_predictions:
            report.predictions[rec.case_id] = pred
        mm = volume_metrics(pred, vol.label, len(cache.class_names), vol.spacing)
        vx = volume_metrics(pred, vol.label, len(cache.class_names), None) if voxels else None
        for c, m in mm.items():
            row = {
                "case_id": rec.case_id,
                "patient_id": rec.patient_id,
                "class": cache.class_names[c],
                "dice": m.dice,
                "asd_mm": m.asd,
                "hd95_mm": m.hd95,
                "pred_voxels": m.pred_voxels,
                "gt_voxels": m.gt_voxels,
                "spacing": list(vol.spacing),
            }
            if vx is not None:
                row["asd_vox"], row["hd95_vox"] = vx[c].asd, vx[c].hd95
            report.rows.append(row)
            per_class[c].append(row)
        if overlay_dir is not None and (max_overlays is None or k < max_overlays):
            report.overlays += write_volume_overlays(
                vol, {"prediction": pred}, overlay_dir, cache.class_names, overlay_slices
            )
    for c, rows in per_class.items():
        asd, n = nan_summary([r["asd_mm"] for r in rows])
        hd, _ = nan_summary([r["hd95_mm"] for r in rows])
        s = {
            "dice": float(np.mean([r["dice"] for r in rows])),
            "asd": asd,
            "hd95": hd,
            "n_dist": n,
            "n_volumes": len(rows),
        }
        if voxels:
            s["asd_vox"] = nan_summary([r["asd_vox"] for r in rows])[0]
            s["hd95_vox"] = nan_summary([r["hd95_vox"] for r in rows])[0]
        report.summary[cache.class_names[c]] = s
    report.mean_dice = float(np.mean([s["dice"] for s in report.summary.values()]))
    return report


def write_report(report: EvalReport, out_dir: str | Path, extra: dict | None = None) -> tuple[Path, Path]:
    """Write ``metrics.csv`` (one row per volume and class) and ``metrics.json`` (rows + summary)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out / "metrics.csv", out / "metrics.json"
    buf = io.StringIO()
    fields = [k for k in report.rows[0] if k != "spacing"] + ["spacing"]
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for r in report.rows:
        w.writerow({**r, "spacing": "x".join(f"{s:g}" for s in r["spacing"])})
    atomic_write_text(csv_path, buf.getvalue(), tag="report")
    atomic_write_json(
        json_path,
        {
            "conventions": CONVENTIONS,
            "unit": report.unit,
            "mean_dice": report.mean_dice,
            "summary": report.summary,
            "rows": report.rows,
            **(extra or {}),
        },
    )
    return csv_path, json_path


_COLORS = [
    (0, 0, 0, 0),
    (1.0, 0.2, 0.2, 0.45),
    (0.2, 1.0, 0.2, 0.45),
    (0.2, 0.4, 1.0, 0.45),
    (1, 1, 0, 0.45),
    (1, 0, 1, 0.45),
    (0, 1, 1, 0.45),
    (1, 0.6, 0, 0.45),
]


def prepare_matplotlib():
    """Select the non-interactive Agg backend and import pyplot (returned). The first import in a fresh
    environment builds matplotlib's font cache and logs "generated new fontManager": call this before a
    progress bar starts, not inside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig, path: str | Path) -> Path:
    """Write a matplotlib figure to ``path`` (PNG) and close it."""
    plt = prepare_matplotlib()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write(path, lambda fh: fig.savefig(fh, dpi=80, format="png"), tag="report")
    finally:
        plt.close(fig)
    return path


def _rgba(label: np.ndarray) -> np.ndarray:
    lut = np.array([_COLORS[i % len(_COLORS)] if i else _COLORS[0] for i in range(int(label.max()) + 1)])
    return lut[label]


def overlay_slices(label: np.ndarray, n: int = OVERLAY_SLICES) -> list[int]:
    """The (at most) ``n`` slices of ``label`` ``[X, Y, Z]`` with the most foreground voxels, in ascending
    z (ties: the lower z); only slices with foreground, and the middle slice when none has any."""
    if n < 1:
        raise ValueError(f"overlays: the number of slices per volume must be >= 1, got {n}")
    fg = (label > 0).reshape(-1, label.shape[2]).sum(0)
    order = sorted(range(label.shape[2]), key=lambda z: (-int(fg[z]), z))
    chosen = [z for z in order[:n] if fg[z] > 0]
    return sorted(chosen) if chosen else [label.shape[2] // 2]


def write_overlay(
    vol: Volume, pred: np.ndarray, path: str | Path, class_names: list[str] | None = None, z: int | None = None
) -> Path:
    """PNG: image, ground truth (if any) and prediction overlaid on slice ``z`` (default: the slice with
    the most foreground), with a colour legend of the classes."""
    if class_names is None:
        class_names = ["background"] + [f"class {c}" for c in range(1, int(pred.max()) + 1)]
    return write_comparison_overlay(vol, {"prediction": pred}, path, class_names, z)


def _curve_legend(fig, axes) -> None:
    """One legend for the lines of ``axes``, below the axes, outside the plotting area (the figure uses
    constrained layout, which reserves the room)."""
    handles, labels = [], []
    for ax in axes:
        h, lab = ax.get_legend_handles_labels()
        handles += h
        labels += lab
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(handles), 3), fontsize=8, frameon=False)


def learning_curve_figure(run_dir: str | Path):
    """The figure of :func:`learning_curve` (not saved)."""
    plt = prepare_matplotlib()
    recs = [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if l.strip()]
    tr = [(r["iteration"], r["loss"]) for r in recs if r["kind"] == "train"]
    va = [(r["iteration"], r["mean_dice"]) for r in recs if r["kind"] == "val"]
    fig, ax = plt.subplots(figsize=(6, 3.8), layout="constrained")
    axes = [ax]
    if tr:
        ax.plot(*zip(*tr), label="train loss (Dice + CE)", color="tab:blue")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    if va:
        ax2 = ax.twinx()
        ax2.plot(*zip(*va), "o-", label="val mean Dice", color="tab:orange")
        ax2.set_ylabel("val mean foreground Dice")
        ax2.set_ylim(0, 1)
        axes.append(ax2)
    _curve_legend(fig, axes)
    return fig


def learning_curve(run_dir: str | Path, path: str | Path) -> Path:
    """PNG of the training loss and the validation mean Dice from ``run_dir/metrics.jsonl``; the legend
    sits below the axes."""
    return _save_figure(learning_curve_figure(run_dir), path)


def _legend(fig, class_names: list[str]) -> None:
    """A colour legend of the foreground classes (the overlay colours, opaque), below the panels."""
    from matplotlib.patches import Patch

    handles = [Patch(color=_COLORS[i % len(_COLORS)][:3], label=name) for i, name in enumerate(class_names) if i]
    if not handles:
        return
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncol=len(handles),
        fontsize=8,
        frameon=False,
        title="classes",
        title_fontsize=8,
    )


def comparison_overlay_figure(
    vol: Volume, predictions: dict[str, np.ndarray], class_names: list[str], z: int | None = None
):
    """The figure of :func:`write_comparison_overlay` (not saved): one panel each for the image, the
    ground truth (if any) and every prediction on slice ``z``, and a colour legend of ``class_names``."""
    plt = prepare_matplotlib()
    ref = vol.label if vol.label is not None else next(iter(predictions.values()))
    if z is None:
        z = overlay_slices(ref, 1)[0]
    img = vol.image[:, :, z].T
    panels = (
        [("image", None)]
        + ([("ground truth", vol.label[:, :, z].T)] if vol.label is not None else [])
        + [(name, pred[:, :, z].T) for name, pred in predictions.items()]
    )
    aspect = vol.spacing[1] / vol.spacing[0]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.8 * len(panels), 3.7), layout="constrained")
    for ax, (title, lab) in zip(np.atleast_1d(axes), panels):
        ax.imshow(img, cmap="gray", aspect=aspect)
        if lab is not None:
            ax.imshow(_rgba(lab.astype(np.int64)), aspect=aspect)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{vol.record.case_id}, slice z={z} of {vol.image.shape[2]}", fontsize=10)
    _legend(fig, class_names)
    return fig


def write_comparison_overlay(
    vol: Volume, predictions: dict[str, np.ndarray], path: str | Path, class_names: list[str], z: int | None = None
) -> Path:
    """PNG: image, ground truth and each method's prediction on the same slice (default: the slice with
    the most ground-truth foreground), with a colour legend of the classes."""
    return _save_figure(comparison_overlay_figure(vol, predictions, class_names, z), path)


def write_volume_overlays(
    vol: Volume,
    predictions: dict[str, np.ndarray],
    out_dir: str | Path,
    class_names: list[str],
    slices: int = OVERLAY_SLICES,
) -> list[Path]:
    """:func:`write_comparison_overlay` for the ``slices`` slices of the volume with the most ground-truth
    foreground (:func:`overlay_slices`; without ground truth: of the first prediction), one PNG each:
    ``out_dir/<case_id>_z<z>.png``. Returns the paths, in ascending z."""
    ref = vol.label if vol.label is not None else next(iter(predictions.values()))
    return [
        write_comparison_overlay(vol, predictions, Path(out_dir) / f"{vol.record.case_id}_z{z:02d}.png", class_names, z)
        for z in overlay_slices(ref, slices)
    ]


def comparison_curves_figure(runs: dict[str, list[tuple[str | Path, int]]]):
    """The figure of :func:`comparison_curves` (not saved)."""
    plt = prepare_matplotlib()
    fig, ax = plt.subplots(figsize=(6.5, 4.0), layout="constrained")
    for name, parts in runs.items():
        pts = []
        for run_dir, offset in parts:
            p = Path(run_dir) / "metrics.jsonl"
            if p.exists():
                recs = [json.loads(l) for l in p.read_text().splitlines() if l.strip()]
                pts += [(r["iteration"] + offset, r["mean_dice"]) for r in recs if r["kind"] == "val"]
        if pts:
            ax.plot(*zip(*pts), "o-", ms=3, label=name)
    ax.set_xlabel("iteration (whole budget)")
    ax.set_ylabel("val mean foreground Dice")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    _curve_legend(fig, [ax])
    return fig


def comparison_curves(runs: dict[str, list[tuple[str | Path, int]]], path: str | Path) -> Path:
    """PNG: validation mean Dice against the iteration of the whole budget, one line per method; the
    legend sits below the axes, outside the plotting area.

    ``runs``: method -> [(run directory, iteration offset)], e.g. GLCon's stage at offset 0 and the
    MONA stage at offset ``pretrain_iterations``."""
    return _save_figure(comparison_curves_figure(runs), path)
