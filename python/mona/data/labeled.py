"""Which training slices are labeled: the one place training asks.

``labeled_split(cache, data_cfg)`` returns the labeled and unlabeled slices of the cache's train
split. Today: whole patients, the first ``labeled_patients`` (or ``labeled_ratio``) of the train
split in its order (the shipped ACDC lists). Extended by the split-list work (LiTS / MMWHS lists,
user lists, slice-level lists such as MMWHS 1 %).
"""

from __future__ import annotations

from dataclasses import dataclass

from .dataset import SliceCache, SliceRef
from .readers import DataError
from .splits import labeled_unlabeled


@dataclass
class LabeledSplit:
    """labeled / unlabeled: slices of the train split; labeled_patients: patients with any labeled
    slice (for logs and checkpoints); description: one line for the console."""

    labeled: list[SliceRef]
    unlabeled: list[SliceRef]
    labeled_patients: list[str]
    description: str


def labeled_split(cache: SliceCache, *, labeled_patients: int | None = None, labeled_ratio: float | None = None,
                  labeled_list: str | None = None) -> LabeledSplit:
    """The labeled / unlabeled slices of ``cache``'s train split."""
    train_patients = cache.splits["train"]
    if not train_patients:
        raise DataError(f"{cache.root}: the train split is empty")
    if labeled_list is not None:
        raise DataError("data.labeled_list is not supported yet")
    lab_p, unl_p = labeled_unlabeled(train_patients, labeled_patients=labeled_patients, labeled_ratio=labeled_ratio)
    lab = cache.slice_refs(cache.cases_of_patients(lab_p))
    unl = cache.slice_refs(cache.cases_of_patients(unl_p)) if unl_p else []
    return LabeledSplit(lab, unl, list(lab_p),
                        f"{len(lab_p)} labeled patient(s) ({len(lab)} slices), {len(unl_p)} unlabeled "
                        f"({len(unl)} slices)")
