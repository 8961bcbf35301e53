"""Patient splits.

ACDC: the shipped SSL4MIS lists (package data ``mona/data/splits/acdc/*.list``): 70 train / 10 val /
20 test patients. The labeled subset is the first n patients in order of first appearance in
``train_slices.list`` (whole patients: 1 % -> 1, 5 % -> 3, 10 % -> 7 of 70).
LiTS / MMWHS / generic folders: a seeded random split by patient.
"""

from __future__ import annotations

import math
from functools import lru_cache
from importlib import resources

import numpy as np

SPLIT_NAMES = ("train", "val", "test")


def _read_list(name: str) -> list[str]:
    text = resources.files("mona").joinpath(f"data/splits/acdc/{name}.list").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def _patients_in_order(case_names: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for c in case_names:
        seen.setdefault(c.split("_")[0], None)
    return list(seen)


@lru_cache(maxsize=1)
def _acdc_patients_cached() -> tuple[tuple[str, ...], ...]:
    return (
        tuple(_patients_in_order(_read_list("train_slices"))),
        tuple(_patients_in_order(_read_list("val"))),
        tuple(_patients_in_order(_read_list("test"))),
    )


def acdc_patients() -> dict[str, list[str]]:
    """Shipped ACDC patients per split; ``train`` in labeled order (first appearance in train_slices.list)."""
    train, val, test = _acdc_patients_cached()
    return {"train": list(train), "val": list(val), "test": list(test)}


def acdc_case_lists() -> dict[str, list[str]]:
    """Shipped ACDC case (volume) names per split, e.g. ``patient099_frame01``."""
    return {"train": _read_list("train"), "val": _read_list("val"), "test": _read_list("test")}


def labeled_patient_count(ratio: float, n_train_patients: int) -> int:
    """Whole labeled patients for a ratio: ``max(1, floor(ratio * n))`` (70 patients: 1%->1, 5%->3, 10%->7)."""
    if not 0 < ratio <= 1:
        raise ValueError(f"labeled_ratio must be in (0, 1], got {ratio}")
    return min(n_train_patients, max(1, math.floor(ratio * n_train_patients + 1e-9)))


def split_patients(dataset: str, patients: list[str], *, seed: int = 0, n_val: int | None = None,
                   n_test: int | None = None) -> dict[str, list[str]]:
    """Assign the available patients to train/val/test.

    ``acdc``: the shipped lists restricted to the available patients (train kept in labeled order);
    a patient that is in no list is an error. Other datasets: seeded random permutation; defaults
    LiTS 100/0/31 of 131 (scaled by 31/131 when fewer), MMWHS 15/0/5 of 20 (scaled by 1/4),
    folder 20 % test.
    """
    if dataset == "acdc":
        ship = acdc_patients()
        avail = set(patients)
        known = set(ship["train"]) | set(ship["val"]) | set(ship["test"])
        unknown = sorted(avail - known)
        if unknown:
            raise ValueError(f"acdc: patients {unknown[:5]} are in none of the shipped split lists")
        return {k: [p for p in ship[k] if p in avail] for k in SPLIT_NAMES}
    n = len(patients)
    if n_test is None:
        frac = {"lits": 31 / 131, "mmwhs": 5 / 20}.get(dataset, 0.2)
        n_test = max(1, round(n * frac)) if n > 1 else 0
    n_val = n_val or 0
    if n_test + n_val >= n:
        raise ValueError(f"{dataset}: cannot hold out {n_test} test + {n_val} val of {n} patients")
    order = np.random.default_rng(seed).permutation(sorted(patients)).tolist()
    return {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}


def labeled_unlabeled(train_patients: list[str], *, labeled_patients: int | None = None,
                      labeled_ratio: float | None = None) -> tuple[list[str], list[str]]:
    """Split the (ordered) train patients into labeled (the first n) and unlabeled (the rest)."""
    if (labeled_patients is None) == (labeled_ratio is None):
        raise ValueError("give exactly one of labeled_patients or labeled_ratio")
    n = len(train_patients)
    if labeled_ratio is not None:
        k = labeled_patient_count(labeled_ratio, n)
    else:
        k = int(labeled_patients)  # type: ignore[arg-type]
        if not 1 <= k <= n:
            raise ValueError(f"labeled_patients must be in 1..{n} (train patients available), got {k}")
    return train_patients[:k], train_patients[k:]
