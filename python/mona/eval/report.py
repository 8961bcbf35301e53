"""Evaluation reports: per-volume, per-class metrics on the original volumes, tables, CSV/JSON,
PNG overlays and the learning curve."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..data.dataset import SliceCache
from ..data.prepare import atomic_write_json
from ..data.readers import CaseRecord, DatasetSpec, Volume, load_case
from .inference import predict_volume
from .metrics import volume_metrics, nan_summary

CONVENTIONS = ("Dice/ASD/HD95 per foreground class on the original 3-D volume. ASD and HD95 follow medpy "
               "(surfaces by binary erosion, connectivity 1; ASD = mean of the pooled distances of both "
               "directions; HD95 = 95th percentile of them), in mm using the header spacing (or voxels). "
               "Both masks empty: Dice 1, ASD 0, HD95 0. One empty: Dice 0, ASD/HD95 NaN, excluded from the "
               "mean; n_dist counts the volumes that entered the mean.")


def spec_from_manifest(man: dict) -> DatasetSpec:
    norm = man["normalisation"]
    return DatasetSpec(man["dataset"], tuple(man["class_names"]), man["modality"],
                       tuple(man["label_values"]) if man.get("label_values") else None,
                       (norm["low"], norm["high"]) if norm["kind"] == "hu_window" else None)


@dataclass
class EvalReport:
    class_names: list[str]
    rows: list[dict] = field(default_factory=list)      # one per (case, class)
    summary: dict = field(default_factory=dict)          # per class name: means and counts
    mean_dice: float = float("nan")
    unit: str = "mm"
    predictions: dict = field(default_factory=dict)      # case_id -> label volume (keep_predictions=True)

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


def evaluate_cache(model: torch.nn.Module, meta: dict, cache_dir: str | Path, *, split: str = "test",
                   device: str | torch.device = "cpu", voxels: bool = False, overlay_dir: str | Path | None = None,
                   max_overlays: int = 4, progress: bool = True, keep_predictions: bool = False) -> EvalReport:
    """Segment every volume of ``split`` of a prepared cache from its *raw* files (original geometry)
    and compute the metrics at the header spacing (``voxels=True``: also in voxels)."""
    cache = SliceCache(cache_dir)
    if split not in cache.splits:
        raise ValueError(f"evaluate: unknown split {split!r}; the cache has {sorted(cache.splits)}")
    if not cache.splits[split]:
        raise ValueError(f"evaluate: split {split!r} of {cache.root} is empty")
    if list(meta["class_names"]) != list(cache.class_names):
        raise ValueError(f"evaluate: model classes {meta['class_names']} != data classes {cache.class_names}")
    spec = spec_from_manifest(cache.manifest)
    report = EvalReport(list(cache.class_names))
    per_class: dict[int, list] = {c: [] for c in range(1, len(cache.class_names))}
    cases = [cache.cases[i] for i in cache.cases_of_patients(cache.splits[split])]
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
            row = {"case_id": rec.case_id, "patient_id": rec.patient_id, "class": cache.class_names[c],
                   "dice": m.dice, "asd_mm": m.asd, "hd95_mm": m.hd95,
                   "pred_voxels": m.pred_voxels, "gt_voxels": m.gt_voxels, "spacing": list(vol.spacing)}
            if vx is not None:
                row["asd_vox"], row["hd95_vox"] = vx[c].asd, vx[c].hd95
            report.rows.append(row)
            per_class[c].append(row)
        if overlay_dir is not None and k < max_overlays:
            write_overlay(vol, pred, Path(overlay_dir) / f"{rec.case_id}.png", cache.class_names)
    for c, rows in per_class.items():
        asd, n = nan_summary([r["asd_mm"] for r in rows])
        hd, _ = nan_summary([r["hd95_mm"] for r in rows])
        s = {"dice": float(np.mean([r["dice"] for r in rows])), "asd": asd, "hd95": hd, "n_dist": n,
             "n_volumes": len(rows)}
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
    tmp = csv_path.with_name(".metrics.csv.tmp")
    with tmp.open("w", newline="") as fh:
        fields = [k for k in report.rows[0] if k != "spacing"] + ["spacing"]
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for r in report.rows:
            w.writerow({**r, "spacing": "x".join(f"{s:g}" for s in r["spacing"])})
    os.replace(tmp, csv_path)
    atomic_write_json(json_path, {"conventions": CONVENTIONS, "unit": report.unit, "mean_dice": report.mean_dice,
                                  "summary": report.summary, "rows": report.rows, **(extra or {})})
    return csv_path, json_path


_COLORS = [(0, 0, 0, 0), (1.0, 0.2, 0.2, 0.45), (0.2, 1.0, 0.2, 0.45), (0.2, 0.4, 1.0, 0.45), (1, 1, 0, .45),
           (1, 0, 1, .45), (0, 1, 1, .45), (1, .6, 0, .45)]


def _save_figure(fig, path: str | Path) -> Path:
    """Write a matplotlib figure to ``path`` (PNG) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _rgba(label: np.ndarray) -> np.ndarray:
    lut = np.array([_COLORS[i % len(_COLORS)] if i else _COLORS[0] for i in range(int(label.max()) + 1)])
    return lut[label]


def write_overlay(vol: Volume, pred: np.ndarray, path: str | Path, class_names: list[str] | None = None,
                  z: int | None = None) -> Path:
    """PNG: image, ground truth (if any) and prediction overlaid on the slice with the most foreground."""
    if class_names is None:
        class_names = ["background"] + [f"class {c}" for c in range(1, int(pred.max()) + 1)]
    return write_comparison_overlay(vol, {"prediction": pred}, path, class_names, z)


def learning_curve(run_dir: str | Path, path: str | Path) -> Path:
    """PNG of the training loss and the validation mean Dice from ``run_dir/metrics.jsonl``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if l.strip()]
    tr = [(r["iteration"], r["loss"]) for r in recs if r["kind"] == "train"]
    va = [(r["iteration"], r["mean_dice"]) for r in recs if r["kind"] == "val"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if tr:
        ax.plot(*zip(*tr), label="train loss (Dice + CE)", color="tab:blue")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    if va:
        ax2 = ax.twinx()
        ax2.plot(*zip(*va), "o-", label="val mean Dice", color="tab:orange")
        ax2.set_ylabel("val mean foreground Dice")
        ax2.set_ylim(0, 1)
    fig.legend(loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return _save_figure(fig, path)


def _legend(fig, class_names: list[str]) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(color=_COLORS[i % len(_COLORS)][:3], label=name) for i, name in enumerate(class_names) if i]
    if not handles:
        return
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)


def write_comparison_overlay(vol: Volume, predictions: dict[str, np.ndarray], path: str | Path,
                             class_names: list[str], z: int | None = None) -> Path:
    """PNG: image, ground truth and each method's prediction on the same slice (default: the slice with
    the most ground-truth foreground), with a colour legend of the classes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = vol.label if vol.label is not None else next(iter(predictions.values()))
    if z is None:
        z = int(np.argmax((ref > 0).reshape(-1, ref.shape[2]).sum(0)))
    img = vol.image[:, :, z].T
    panels = [("image", None)] + ([("ground truth", vol.label[:, :, z].T)] if vol.label is not None else []) \
        + [(name, pred[:, :, z].T) for name, pred in predictions.items()]
    aspect = vol.spacing[1] / vol.spacing[0]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.8 * len(panels), 3.5))
    for ax, (title, lab) in zip(np.atleast_1d(axes), panels):
        ax.imshow(img, cmap="gray", aspect=aspect)
        if lab is not None:
            ax.imshow(_rgba(lab.astype(np.int64)), aspect=aspect)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{vol.record.case_id}, slice z={z} of {vol.image.shape[2]}", fontsize=10)
    _legend(fig, class_names)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return _save_figure(fig, path)


def comparison_curves(runs: dict[str, list[tuple[str | Path, int]]], path: str | Path) -> Path:
    """PNG: validation mean Dice against the iteration of the whole budget, one line per method.

    ``runs``: method -> [(run directory, iteration offset)], e.g. GLCon's stage at offset 0 and the
    MONA stage at offset ``pretrain_iterations``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
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
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _save_figure(fig, path)
