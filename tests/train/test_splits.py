"""Split lists: counts, disjointness, labeled patients by whole patients in list order; the sampler."""

from __future__ import annotations

import pytest
import torch

from mona.data.sampler import LabeledUnlabeledSampler
from mona.data.splits import acdc_case_lists, acdc_patients, labeled_patient_count, labeled_unlabeled, split_patients


def test_shipped_acdc_counts_and_disjoint():
    p = acdc_patients()
    assert (len(p["train"]), len(p["val"]), len(p["test"])) == (70, 10, 20)
    assert not set(p["train"]) & set(p["val"]) and not set(p["train"]) & set(p["test"]) and not set(p["val"]) & set(p["test"])
    assert len(set(p["train"]) | set(p["val"]) | set(p["test"])) == 100
    cases = acdc_case_lists()
    assert (len(cases["train"]), len(cases["val"]), len(cases["test"])) == (140, 20, 40)
    assert {c.split("_")[0] for c in cases["train"]} == set(p["train"])


def test_labeled_ratio_is_whole_patients_in_list_order():
    train = acdc_patients()["train"]
    assert [labeled_patient_count(r, 70) for r in (0.01, 0.05, 0.1, 1.0)] == [1, 3, 7, 70]
    lab, unl = labeled_unlabeled(train, labeled_ratio=0.05)
    assert lab == ["patient099", "patient038", "patient050"]
    assert len(unl) == 67 and not set(lab) & set(unl)
    with pytest.raises(ValueError, match="labeled_patients must be in 1..70"):
        labeled_unlabeled(train, labeled_patients=0)


def test_acdc_split_restricted_to_available_and_unknown_patient():
    s = split_patients("acdc", ["patient011", "patient038", "patient099", "patient028"])
    assert s == {"train": ["patient099", "patient038"], "val": ["patient028"], "test": ["patient011"]}
    with pytest.raises(ValueError, match="patient101"):
        split_patients("acdc", ["patient101"])


def test_random_split_is_seeded_and_disjoint():
    pats = [f"mr_{i}" for i in range(20)]
    a = split_patients("mmwhs", pats, seed=1)
    assert a == split_patients("mmwhs", pats, seed=1)
    assert a != split_patients("mmwhs", pats, seed=2)
    assert (len(a["train"]), len(a["test"])) == (15, 5)
    assert sorted(a["train"] + a["test"] + a["val"]) == sorted(pats)


def test_sampler_draws_halves_from_the_right_pools():
    lab, unl = list(range(10)), list(range(100, 130))
    s = LabeledUnlabeledSampler(lab, unl, batch_size=6, labeled_bs=3, generator=torch.Generator().manual_seed(0))
    seen = []
    for _ in range(10):
        bl, bu = s.next_batch()
        assert len(bl) == 3 and len(bu) == 3 and set(bl) <= set(lab) and set(bu) <= set(unl)
        seen += bl
    # epoch-wise shuffling: the first 10 labeled draws are a permutation of the pool
    assert sorted(seen[:10]) == lab
