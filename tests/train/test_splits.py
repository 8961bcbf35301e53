"""Split lists: counts, disjointness, labeled patients by whole patients in list order; the shipped
MONA lists (LiTS / MMWHS) and their name mapping; user list files; the sampler."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
import torch

from mona.data.readers import DataError
from mona.data.sampler import LabeledUnlabeledSampler
from mona.data.splits import (
    acdc_case_lists,
    acdc_patients,
    canonical_name,
    labeled_patient_count,
    labeled_unlabeled,
    lits_case_to_volume,
    mona_lists,
    plan_splits,
    read_name_file,
    split_patients,
)

SHARED = Path("/work/shared/data/mona_splits")


def test_shipped_acdc_counts_and_disjoint():
    p = acdc_patients()
    assert (len(p["train"]), len(p["val"]), len(p["test"])) == (70, 10, 20)
    assert (
        not set(p["train"]) & set(p["val"])
        and not set(p["train"]) & set(p["test"])
        and not set(p["val"]) & set(p["test"])
    )
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


def _file_names(path) -> list[str]:
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("dataset", ["lits", "mmwhs"])
def test_packaged_mona_lists_are_the_published_files(dataset):
    if not SHARED.is_dir():
        pytest.skip("the published lists are not on this machine")
    pkg = resources.files("mona").joinpath(f"data/splits/{dataset}")
    names = sorted(p.name for p in pkg.iterdir() if p.name.endswith(".list"))
    assert names == ["test.list", "train_10_.list", "train_1_.list", "train_5_.list", "train_all.list"]
    for n in names:  # byte-identical to the copy published with the MONA code
        assert pkg.joinpath(n).read_bytes() == (SHARED / dataset / n).read_bytes(), n


def test_lits_lists_counts_and_name_mapping():
    m = mona_lists("lits")
    assert (len(m["train"]), len(m["test"])) == (100, 31)
    # caseNNNN (1..131) -> volume-(NNNN-1) (0..130): train = case0001..0100, test = case0101..0131
    assert sorted(m["train"], key=lambda v: int(v[7:])) == [f"volume-{n}" for n in range(100)]
    assert sorted(m["test"], key=lambda v: int(v[7:])) == [f"volume-{n}" for n in range(100, 131)]
    assert m["train"][:3] == ["volume-2", "volume-0", "volume-37"]  # file order kept (case0003, case0001, case0038)
    lab = m["labeled"]
    assert {k: len(v) for k, v in lab.items()} == {"0.01": 1, "0.05": 5, "0.1": 10}
    assert lab["0.01"] == ["volume-2"] and lab["0.05"] == m["train"][:5] and lab["0.1"] == m["train"][:10]
    assert set(lab["0.01"]) < set(lab["0.05"]) < set(lab["0.1"]) < set(m["train"])
    assert lits_case_to_volume("case0131") == "volume-130"
    assert canonical_name("lits", "case0003.h5") == "volume-2" and canonical_name("lits", "volume-2") == "volume-2"
    assert canonical_name("lits", "case0003_slice_7") == "volume-2_slice_7"
    assert canonical_name("mmwhs", "case0003") == "case0003"  # the alias is LiTS-only
    with pytest.raises(ValueError, match="case0000"):
        lits_case_to_volume("case0000")


def test_mmwhs_lists_counts_and_the_slice_list():
    m = mona_lists("mmwhs")
    assert (len(m["train"]), len(m["test"])) == (15, 5)
    assert sorted(m["train"] + m["test"]) == [f"ct_train_{n}" for n in range(1001, 1021)]
    assert sorted(m["test"]) == ["ct_train_1001", "ct_train_1002", "ct_train_1008", "ct_train_1014", "ct_train_1015"]
    lab = m["labeled"]
    assert lab["0.05"] == ["ct_train_1018"] and sorted(lab["0.1"]) == ["ct_train_1004", "ct_train_1018"]
    one = lab["0.01"]
    assert len(one) == len(set(one)) == 18
    assert all(n.startswith("ct_train_1018_slice_") for n in one)
    ks = sorted(int(n.rsplit("_", 1)[1]) for n in one)
    assert ks[0] == 42 and ks[-1] == 186


def test_plan_lits_restricts_lists_and_rejects_unlisted_volumes():
    plan = plan_splits("lits", ["volume-0", "volume-2", "volume-58", "volume-100"])
    assert plan.splits == {"train": ["volume-2", "volume-0", "volume-58"], "val": [], "test": ["volume-100"]}
    assert plan.labeled_names == {
        "0.01": ["volume-2"],
        "0.05": ["volume-2", "volume-0"],
        "0.1": ["volume-2", "volume-0"],
    }
    assert len(plan.labeled_absent["0.05"]) == 3 and "0.01" not in plan.labeled_absent
    assert "MONA authors' lists" in plan.source
    with pytest.raises(DataError, match=r"volume-131.*--splits DIR"):
        plan_splits("lits", ["volume-0", "volume-131"])
    # no listed volume at all (renumbered data): the seeded random split, said in the notes
    rnd = plan_splits("lits", [f"volume-{n}" for n in range(200, 208)], seed=3)
    assert rnd.splits == split_patients("lits", [f"volume-{n}" for n in range(200, 208)], seed=3)
    assert "random" in rnd.source and any("none of the 8" in n for n in rnd.notes)


def test_plan_mmwhs_lists_for_ct_random_for_mr():
    mr = [f"mr_train_{n}" for n in range(1001, 1005)]
    plan = plan_splits("mmwhs", ["ct_train_1001", "ct_train_1004", "ct_train_1018", *mr], seed=5)
    rnd = split_patients("mmwhs", mr, seed=5)
    assert plan.splits["train"] == ["ct_train_1018", "ct_train_1004", *rnd["train"]]
    assert plan.splits["test"] == ["ct_train_1001", *rnd["test"]]
    assert plan.labeled_names["0.05"] == ["ct_train_1018"] and len(plan.labeled_names["0.01"]) == 18
    assert any("CT volumes only" in n for n in plan.notes) and "non-CT" in plan.source
    only_mr = plan_splits("mmwhs", mr, seed=5)
    assert only_mr.splits == rnd and only_mr.labeled_names == {}
    with pytest.raises(DataError, match="ct_train_1021"):
        plan_splits("mmwhs", ["ct_train_1001", "ct_train_1021"])


def test_plan_folder_stays_random():
    pats = [f"p{i}" for i in range(10)]
    assert plan_splits("folder", pats, seed=2).splits == split_patients("folder", pats, seed=2)


def _write(d: Path, **files):
    d.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (d / f"{name}.list").write_text(text)
    return d


def test_user_split_lists(tmp_path):
    pats = ["a", "b", "c", "d"]
    d = _write(tmp_path / "ok", train="# mine\nb\n\na  # trailing comment\n", val="d\n", test="c\n", labeled="a\n")
    plan = plan_splits("folder", pats, splits_dir=d)
    assert plan.splits == {"train": ["b", "a"], "val": ["d"], "test": ["c"]}
    assert plan.default_labeled == (str((d / "labeled.list").resolve()), [(1, "a")])
    assert read_name_file(d / "train.list") == [(2, "b"), (4, "a")]
    # case ids are accepted and mapped to their patient
    acdc = _write(tmp_path / "acdc", train="patient001_frame01\npatient001_frame02\n", test="patient002\n")
    cp = {"patient001_frame01": "patient001", "patient001_frame02": "patient001", "patient002_frame01": "patient002"}
    plan = plan_splits("acdc", ["patient001", "patient002"], splits_dir=acdc, case_patient=cp)
    assert plan.splits == {"train": ["patient001"], "val": [], "test": ["patient002"]}


@pytest.mark.parametrize(
    "files, pattern",
    [
        ({"train": "a\nb\nzz\n", "test": "c\nd\n"}, r"train\.list: line 3: 'zz' is not a patient"),
        ({"train": "a\nb\n", "test": "c\nd\na\n"}, r"test\.list: line 3: patient 'a' is also in train\.list"),
        ({"train": "a\nb\n", "test": "c\n"}, r"present patient\(s\) d are in none of"),
        ({"train": "a\nb\nc\nd\n"}, r"missing test\.list"),
        ({"train": "# nothing\n", "test": "a\nb\nc\nd\n"}, r"train\.list: names no patient"),
    ],
)
def test_user_split_list_errors(tmp_path, files, pattern):
    d = _write(tmp_path / "s", **files)
    with pytest.raises(DataError, match=pattern):
        plan_splits("folder", ["a", "b", "c", "d"], splits_dir=d)


def test_user_split_dir_must_exist(tmp_path):
    with pytest.raises(DataError, match=r"--splits .*nope: not a directory"):
        plan_splits("lits", ["volume-0"], splits_dir=tmp_path / "nope")
