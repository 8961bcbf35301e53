"""``mona prepare``: raw volumes -> a memory-mappable slice cache.

Layout of ``OUT_DIR``::

    manifest.json                    written last (atomically): the cache is valid only if it exists
    volumes/<case>.image.npy         float32 [Z, S, S], normalised to [0, 1]
    volumes/<case>.label.npy         uint8   [Z, S, S], class indices
    volumes/<case>.json              per-volume sidecar (source fingerprint, spacing, shape, affine)

Each file is written to a temporary name and moved into place with ``os.replace``; a volume
counts as done only once its sidecar exists and matches the source files and options, so an
interrupted run resumes where it stopped and a finished cache is never rewritten (idempotent).

A run that will change anything removes ``manifest.json`` *before* it writes the first file, so a
run killed at any point leaves either the previous complete cache (nothing had changed yet) or no
cache (no manifest: loading says so, a re-run completes it) -- never a mix of old and new volumes
under a manifest. The run holds ``OUT_DIR/.mona.lock`` (:mod:`mona.lockfile`): a second
``mona prepare`` into the same cache fails at once.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..atomicio import atomic_write, remove_stale_temps
from ..errors import UsageError
from ..lockfile import locked
from .readers import READERS, SPECS, CaseRecord, DataError, DatasetSpec, folder_spec, load_case
from .splits import LABELED_LIST_FILES, plan_splits, resolve_labeled_names, shipped_list_path

CACHE_VERSION = 1
MANIFEST = "manifest.json"


def normalise_volume(image: np.ndarray, normalisation: dict) -> np.ndarray:
    """Per-volume intensity normalisation to [0, 1]. image: any shape; returns float32, same shape.

    ``minmax``: (x - min) / (max - min) (a constant volume becomes all zeros);
    ``hu_window``: clip to [low, high] then scale.
    """
    x = image.astype(np.float32)
    if normalisation["kind"] == "minmax":
        lo, hi = float(x.min()), float(x.max())
        return np.zeros_like(x) if hi <= lo else (x - lo) / (hi - lo)
    if normalisation["kind"] == "hu_window":
        lo, hi = float(normalisation["low"]), float(normalisation["high"])
        return (np.clip(x, lo, hi) - lo) / (hi - lo)
    raise ValueError(f"unknown normalisation {normalisation!r}")


def resize_image_slices(volume: np.ndarray, size: int) -> np.ndarray:
    """``[X, Y, Z]`` -> ``[Z, size, size]`` float32, bilinear (align_corners=False)."""
    t = torch.from_numpy(np.ascontiguousarray(volume.transpose(2, 0, 1), dtype=np.float32))[:, None]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[:, 0].numpy()


def resize_label_slices(label: np.ndarray, size: int) -> np.ndarray:
    """``[X, Y, Z]`` int -> ``[Z, size, size]`` uint8, nearest neighbour (``nearest-exact``)."""
    t = torch.from_numpy(np.ascontiguousarray(label.transpose(2, 0, 1)).astype(np.float32))[:, None]
    out = F.interpolate(t, size=(size, size), mode="nearest-exact")[:, 0]
    return out.round().to(torch.uint8).numpy()


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fingerprint(path: str | None) -> dict | None:
    if path is None:
        return None
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def atomic_write_json(path: Path, obj, *, tag: str = "json") -> None:
    """Write JSON to ``path`` atomically (:func:`mona.atomicio.atomic_write`)."""
    atomic_write(path, lambda fh: fh.write(json.dumps(obj, indent=1).encode()), tag=tag)


def _save_npy(path: Path, arr: np.ndarray) -> None:
    atomic_write(path, lambda fh: np.save(fh, arr), tag="prepare")


@dataclass
class PrepareResult:
    out_dir: Path
    processed: list[str]
    skipped: list[str]
    manifest: dict
    notes: list[str] = field(default_factory=list)  # lines for the summary (split source, restricted lists, ...)


def resolve_spec(
    dataset: str, num_classes: int | None = None, modality: str = "MR", class_names: Sequence[str] | None = None
) -> DatasetSpec:
    if dataset == "folder":
        return folder_spec(num_classes, modality, class_names)
    if class_names is not None:
        raise UsageError(f"--class-names applies to the folder layout only; {dataset} has fixed classes")
    if dataset not in SPECS:
        raise UsageError(f"unknown dataset {dataset!r}; choose one of {sorted(READERS)}")
    return SPECS[dataset]


def prepare(
    dataset: str,
    raw_dir: str | Path,
    out_dir: str | Path,
    *,
    size: int = 256,
    seed: int = 0,
    num_classes: int | None = None,
    modality: str = "MR",
    progress: bool = True,
    splits_dir: str | Path | None = None,
    class_names: Sequence[str] | None = None,
    _after_volume: Callable[[str], None] | None = None,
) -> PrepareResult:
    """Build (or complete, or verify) the slice cache of ``dataset`` read from ``raw_dir``.

    Splits (see :func:`mona.data.splits.plan_splits`): ``splits_dir`` (the user's ``train.list`` /
    ``test.list`` / optional ``val.list`` / ``labeled.list``) for any dataset; otherwise ACDC: the
    shipped SSL4MIS lists; LiTS / MMWHS-CT: the MONA authors' lists (restricted to the volumes
    present); folder / MMWHS-MR: a random split seeded by ``seed``. The split is checked before any
    volume is processed. ``class_names``: folder layout only (implies ``num_classes``).
    ``_after_volume`` is a test hook called after each volume is committed.

    Manifest fields about splits: ``splits`` (patients per split), ``split_source`` (one line),
    ``labeled_lists`` (labeled_ratio key ``"0.01"``/``"0.05"``/``"0.1"`` -> entries of the authors'
    list, restricted to this cache), ``labeled_lists_absent`` (key -> listed names left out),
    ``default_labeled`` (``{"source": labeled.list, "entries": [...]}`` or None). Entries: a patient
    id, ``{"case": id}`` or ``{"case": id, "slices": [k, ...]}``.
    """
    if size < 16:
        raise UsageError(f"prepare: --size must be >= 16, got {size}")
    spec = resolve_spec(dataset, num_classes, modality, class_names)
    records: list[CaseRecord] = READERS[dataset](raw_dir)
    plan = plan_splits(
        dataset,
        sorted({r.patient_id for r in records}),
        seed=seed,
        splits_dir=splits_dir,
        case_patient={r.case_id: r.patient_id for r in records},
    )
    with locked(out_dir, "mona prepare"):
        return _prepare(dataset, records, plan, Path(out_dir), raw_dir, spec, size, seed, progress, _after_volume)


def _prepare(
    dataset: str,
    records: list[CaseRecord],
    plan,
    out: Path,
    raw_dir: str | Path,
    spec: DatasetSpec,
    size: int,
    seed: int,
    progress: bool,
    _after_volume: Callable[[str], None] | None,
) -> PrepareResult:
    """:func:`prepare` once the inputs are checked, holding the cache's lock."""
    from tqdm import tqdm

    vol_dir = out / "volumes"
    vol_dir.mkdir(parents=True, exist_ok=True)
    for d in (out, vol_dir):
        remove_stale_temps(d)  # we hold the lock: these are an interrupted run's
    man_path = out / MANIFEST
    options = {
        "cache_version": CACHE_VERSION,
        "dataset": dataset,
        "size": size,
        "normalisation": spec.normalisation,
        "class_names": list(spec.class_names),
        "label_values": list(spec.label_values) if spec.label_values else None,
    }
    cases, processed, skipped = [], [], []
    for rec in tqdm(records, desc=f"prepare {dataset}", disable=not progress, unit="vol"):
        sources = {"image": _fingerprint(rec.image_path), "label": _fingerprint(rec.label_path)}
        side = vol_dir / f"{rec.case_id}.json"
        img_file, lab_file = vol_dir / f"{rec.case_id}.image.npy", vol_dir / f"{rec.case_id}.label.npy"
        meta = None
        if side.exists() and img_file.exists() and lab_file.exists():
            try:
                old = json.loads(side.read_text())
                if old.get("sources") == sources and old.get("options") == options:
                    meta = old
            except (json.JSONDecodeError, OSError):
                meta = None
        if meta is None:
            vol = load_case(rec, spec)
            assert vol.label is not None
            image = resize_image_slices(normalise_volume(vol.image, spec.normalisation), size)
            label = resize_label_slices(vol.label, size)
            if man_path.exists():  # about to change the cache: it stops being one until the new manifest
                man_path.unlink()
                _fsync_dir(out)
            _save_npy(img_file, image)
            _save_npy(lab_file, label)
            meta = {
                "case_id": rec.case_id,
                "patient_id": rec.patient_id,
                "image_path": rec.image_path,
                "label_path": rec.label_path,
                "extra": rec.extra,
                "spacing": list(vol.spacing),
                "shape": list(vol.image.shape),
                "affine": vol.affine.tolist(),
                "n_slices": int(image.shape[0]),
                "class_voxels": np.bincount(vol.label.ravel(), minlength=spec.num_classes).tolist(),
                "sources": sources,
                "options": options,
            }
            atomic_write_json(side, meta, tag="prepare")
            processed.append(rec.case_id)
        else:
            skipped.append(rec.case_id)
        cases.append(meta)
        if _after_volume is not None:
            _after_volume(rec.case_id)
    notes = [f"split: {plan.source}", *plan.notes]
    labeled_lists, labeled_absent = {}, {k: list(v) for k, v in plan.labeled_absent.items()}
    for key, names in plan.labeled_names.items():
        entries, problems = resolve_labeled_names(
            [(None, n) for n in names],
            cases,
            plan.splits["train"],
            dataset,
            shipped_list_path(dataset, LABELED_LIST_FILES[key]),
            strict=False,
        )
        for name, why in problems:
            notes.append(f"{LABELED_LIST_FILES[key]}.list: left out {name} ({why})")
            labeled_absent.setdefault(key, []).append(name)
        if entries:
            labeled_lists[key] = entries
    default_labeled = None
    if plan.default_labeled is not None:
        src, lines = plan.default_labeled
        if not lines:
            raise DataError(f"{src}: the labeled list names no patient or slice (delete it or fill it)")
        entries, _ = resolve_labeled_names(lines, cases, plan.splits["train"], dataset, src)
        default_labeled = {"source": src, "entries": entries}
        notes.append(f"default labeled list: {src}")
    manifest = {
        **options,
        "raw_dir": os.path.abspath(str(raw_dir)),
        "seed": seed,
        "modality": spec.modality,
        "num_classes": spec.num_classes,
        "splits": plan.splits,
        "split_source": plan.source,
        "labeled_lists": labeled_lists,
        "labeled_lists_absent": labeled_absent,
        "default_labeled": default_labeled,
        "cases": [
            {
                k: c[k]
                for k in (
                    "case_id",
                    "patient_id",
                    "image_path",
                    "label_path",
                    "extra",
                    "spacing",
                    "shape",
                    "affine",
                    "n_slices",
                    "class_voxels",
                    "sources",
                )
            }
            for c in cases
        ],
    }
    old_manifest = None
    if man_path.exists():
        try:
            old_manifest = json.loads(man_path.read_text())
        except (json.JSONDecodeError, OSError):
            old_manifest = None
    if old_manifest != manifest:
        atomic_write_json(man_path, manifest, tag="prepare")
    return PrepareResult(out, processed, skipped, manifest, notes)
