"""labeled_split: the MONA authors' lists (whole volumes and MMWHS 1 % slices) on tiny fake LiTS /
MMWHS caches, ACDC's first-n rule, user labeled lists and their errors, the --splits default list."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from niftilib import write_nifti

from mona.data.dataset import SliceCache, SliceRef
from mona.data.labeled import labeled_split
from mona.data.prepare import prepare
from mona.data.readers import DataError
from mona.data.splits import mona_lists

MMWHS_1018_SLICES = 190  # the 1 % list names slices 42..186


@pytest.fixture(scope="module")
def lits_cache(tmp_path_factory):
    """volume-2 (case0003: 1/5/10 %), volume-0 (case0001: 5/10 %), volume-58 (case0059: train only),
    volume-100 (case0101: test); 3 slices each."""
    root = tmp_path_factory.mktemp("lits")
    rng = np.random.default_rng(0)
    for n in (0, 2, 58, 100):
        write_nifti(root / "raw" / f"volume-{n}.nii", rng.integers(-300, 300, (8, 8, 3)).astype(np.int16))
        write_nifti(root / "raw" / f"segmentation-{n}.nii", rng.integers(0, 3, (8, 8, 3)).astype(np.uint8))
    prepare("lits", root / "raw", root / "cache", size=16, progress=False)
    return SliceCache(root / "cache")


@pytest.fixture(scope="module")
def mmwhs_cache(tmp_path_factory):
    """CT 1018 (190 slices, intensity = slice index), 1004, 1005 (train), 1001 (test); MR 1001-1004."""
    root = tmp_path_factory.mktemp("mmwhs")
    raw = root / "raw"
    z = np.broadcast_to(np.arange(MMWHS_1018_SLICES, dtype=np.float32), (4, 4, MMWHS_1018_SLICES)).copy()
    write_nifti(raw / "ct_train_1018_image.nii.gz", z)
    write_nifti(raw / "ct_train_1018_label.nii.gz", np.zeros(z.shape, np.int16))
    rng = np.random.default_rng(1)
    for name in ("ct_train_1004", "ct_train_1005", "ct_train_1001", *(f"mr_train_{n}" for n in range(1001, 1005))):
        write_nifti(raw / f"{name}_image.nii.gz", rng.normal(0, 1, (4, 4, 2)).astype(np.float32))
        write_nifti(raw / f"{name}_label.nii.gz", rng.choice([0, 205, 500], (4, 4, 2)).astype(np.int16))
    prepare("mmwhs", raw, root / "cache", size=16, seed=0, progress=False)
    return SliceCache(root / "cache")


def _patients(cache, refs):
    return sorted({cache.cases[r.case_index]["patient_id"] for r in refs})


def _check_partition(cache, ls):
    train = cache.slice_refs(cache.cases_of_patients(cache.splits["train"]))
    assert not set(ls.labeled) & set(ls.unlabeled)
    assert sorted(ls.labeled + ls.unlabeled, key=lambda r: (r.case_index, r.z)) == sorted(
        train, key=lambda r: (r.case_index, r.z)
    )


def test_lits_ratios_select_the_authors_lists(lits_cache):
    c = lits_cache
    assert c.splits == {"train": ["volume-2", "volume-0", "volume-58"], "val": [], "test": ["volume-100"]}
    assert c.manifest["labeled_lists"] == {
        "0.01": ["volume-2"],
        "0.05": ["volume-2", "volume-0"],
        "0.1": ["volume-2", "volume-0"],
    }
    assert sorted(c.manifest["labeled_lists_absent"]["0.1"]) == sorted(
        set(mona_lists("lits")["labeled"]["0.1"]) - {"volume-2", "volume-0"}
    )
    one = labeled_split(c, labeled_ratio=0.01)
    assert one.labeled_patients == ["volume-2"] and len(one.labeled) == 3 and len(one.unlabeled) == 6
    assert "train_1_.list" in one.description and one.source == "mona:train_1_"
    _check_partition(c, one)
    five = labeled_split(c, labeled_ratio=0.05)
    assert five.labeled_patients == ["volume-2", "volume-0"] and _patients(c, five.unlabeled) == ["volume-58"]
    assert "3 listed name(s) not in this cache" in five.description
    ten = labeled_split(c, labeled_ratio=0.10000000001)  # float noise still matches the 0.1 list
    assert ten.labeled_patients == ["volume-2", "volume-0"] and ten.source == "mona:train_10_"
    # a ratio without a list: whole patients in split order, and the description says so
    other = labeled_split(c, labeled_ratio=0.5)
    assert other.labeled_patients == ["volume-2"] and other.source == "first_patients"
    assert "no MONA authors' list" in other.description


def test_mmwhs_one_percent_is_18_slices_at_the_raw_axial_index(mmwhs_cache):
    c = mmwhs_cache
    assert c.splits["train"][:3] == ["ct_train_1005", "ct_train_1018", "ct_train_1004"]
    assert c.splits["test"][0] == "ct_train_1001" and c.splits["val"] == []
    assert sorted(c.splits["train"][3:] + c.splits["test"][1:]) == [f"mr_train_{n}" for n in range(1001, 1005)]
    ls = labeled_split(c, labeled_ratio=0.01)
    listed = sorted(int(n.rsplit("_", 1)[1]) for n in mona_lists("mmwhs")["labeled"]["0.01"])
    i1018 = c.case_index["ct_train_1018"]
    assert sorted(r.z for r in ls.labeled) == listed and {r.case_index for r in ls.labeled} == {i1018}
    assert ls.labeled_patients == ["ct_train_1018"] and "partly" in ls.description
    # slice z of the cache is slice K of the raw volume (raw intensity = K, min-max over 0..189)
    img, _ = c.load_batch(ls.labeled)
    np.testing.assert_allclose(img[:, 0].amax(dim=(1, 2)).numpy(), [r.z / 189 for r in ls.labeled], atol=1e-5)
    np.testing.assert_allclose(img[:, 0].amin(dim=(1, 2)).numpy(), [r.z / 189 for r in ls.labeled], atol=1e-5)
    # the other slices of 1018 are unlabeled, as is every slice of the other train volumes
    unl_1018 = [r for r in ls.unlabeled if r.case_index == i1018]
    assert len(unl_1018) == MMWHS_1018_SLICES - 18
    assert _patients(c, ls.unlabeled) == sorted(c.splits["train"])
    _check_partition(c, ls)
    five, ten = labeled_split(c, labeled_ratio=0.05), labeled_split(c, labeled_ratio=0.1)
    assert five.labeled == c.slice_refs([i1018])
    assert sorted(ten.labeled_patients) == ["ct_train_1004", "ct_train_1018"] and len(ten.labeled) == 192
    assert "ct_train_1018" not in _patients(c, ten.unlabeled)


def test_acdc_ratio_and_patients_are_first_whole_patients(tiny_cache):
    c = SliceCache(tiny_cache)
    assert c.manifest["labeled_lists"] == {} and c.manifest["default_labeled"] is None
    ls = labeled_split(c, labeled_ratio=0.01)
    assert ls.labeled_patients == c.splits["train"][:1]
    assert {c.cases[r.case_index]["case_id"] for r in ls.labeled} == {
        f"{c.splits['train'][0]}_frame01",
        f"{c.splits['train'][0]}_frame02",
    }
    assert "no MONA" not in ls.description
    _check_partition(c, ls)
    assert labeled_split(c, labeled_patients=2).labeled_patients == c.splits["train"][:2]
    with pytest.raises(DataError, match=r"data.labeled_patients: labeled_patients must be in 1\.\.3"):
        labeled_split(c, labeled_patients=4)
    with pytest.raises(DataError, match="set data.labeled_patients, data.labeled_ratio or data.labeled_list"):
        labeled_split(c)
    with pytest.raises(DataError, match="at most one of"):
        labeled_split(c, labeled_patients=1, labeled_ratio=0.1)
    with pytest.raises(DataError, match=r"labeled_ratio must be in \(0, 1\]"):
        labeled_split(c, labeled_ratio=0)


def test_user_labeled_list(lits_cache, tmp_path):
    c = lits_cache
    f = tmp_path / "lab.list"
    f.write_text(
        "# my labels\n\nvolume-58\ncase0001_slice_1   # authors' name, slice 1 of volume-0\nvolume-0_slice_2\n"
    )
    ls = labeled_split(c, labeled_list=str(f))
    i0, i58 = c.case_index["volume-0"], c.case_index["volume-58"]
    assert ls.labeled == [SliceRef(i58, 0), SliceRef(i58, 1), SliceRef(i58, 2), SliceRef(i0, 1), SliceRef(i0, 2)]
    assert ls.labeled_patients == ["volume-58", "volume-0"] and SliceRef(i0, 0) in ls.unlabeled
    assert ls.source == f"list:{f}"
    _check_partition(c, ls)


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("volume-2\nvolume-7\n", r"lab\.list: line 2: 'volume-7' is not a patient, case or CASE_slice_K"),
        ("volume-2_slice_3\n", r"lab\.list: line 1: 'volume-2_slice_3' slice 3 is out of range: case 'volume-2' has 3"),
        ("volume-100\n", r"lab\.list: line 1: 'volume-100' is not in the train split"),
        ("# only a comment\n\n", r"lab\.list: the labeled list names no patient"),
    ],
)
def test_user_labeled_list_errors(lits_cache, tmp_path, text, pattern):
    f = tmp_path / "lab.list"
    f.write_text(text)
    with pytest.raises(DataError, match=pattern):
        labeled_split(lits_cache, labeled_list=str(f))


def test_missing_labeled_list_file(lits_cache, tmp_path):
    with pytest.raises(DataError, match=r"nope\.list: list file does not exist"):
        labeled_split(lits_cache, labeled_list=str(tmp_path / "nope.list"))


def _folder_raw(root, names=("a", "b", "c", "d"), slices=3):
    rng = np.random.default_rng(2)
    for n in names:
        write_nifti(root / "images" / f"{n}.nii.gz", rng.normal(0, 1, (6, 6, slices)).astype(np.float32))
        write_nifti(root / "labels" / f"{n}.nii.gz", rng.integers(0, 3, (6, 6, slices)).astype(np.uint8))
    return root


def test_splits_dir_default_labeled_list(tmp_path):
    raw = _folder_raw(tmp_path / "raw")
    d = tmp_path / "lists"
    d.mkdir()
    (d / "train.list").write_text("b\na\nd\n")
    (d / "test.list").write_text("c\n")
    (d / "labeled.list").write_text("a\nb_slice_2\n")
    r = prepare("folder", raw, tmp_path / "cache", size=16, num_classes=3, splits_dir=d, progress=False)
    man = r.manifest
    assert man["splits"] == {"train": ["b", "a", "d"], "val": [], "test": ["c"]}
    assert man["default_labeled"] == {
        "source": str((d / "labeled.list").resolve()),
        "entries": ["a", {"case": "b", "slices": [2]}],
    }
    assert man["split_source"].startswith("user lists")
    c = SliceCache(tmp_path / "cache")
    ls = labeled_split(c)  # nothing given: the default list applies
    assert ls.labeled_patients == ["a", "b"] and len(ls.labeled) == 4 and len(ls.unlabeled) == 2 + 3
    assert "default labeled list" in ls.description
    # an explicit choice still wins over the default
    assert labeled_split(c, labeled_patients=1).labeled_patients == ["b"]


def test_splits_dir_errors_come_before_any_volume_is_processed(tmp_path):
    raw = _folder_raw(tmp_path / "raw")
    d = tmp_path / "lists"
    d.mkdir()
    (d / "train.list").write_text("a\nb\nc\n")
    (d / "test.list").write_text("e\n")
    with pytest.raises(DataError, match=r"test\.list: line 1: 'e' is not a patient"):
        prepare("folder", raw, tmp_path / "cache", size=16, num_classes=3, splits_dir=d, progress=False)
    assert not (tmp_path / "cache").exists()
    (d / "test.list").write_text("d\n")
    (d / "labeled.list").write_text("a\nd\n")  # d is a test patient
    with pytest.raises(DataError, match=r"labeled\.list: line 2: 'd' is not in the train split"):
        prepare("folder", raw, tmp_path / "cache", size=16, num_classes=3, splits_dir=d, progress=False)
    assert not (tmp_path / "cache" / "manifest.json").exists()


def test_old_manifest_without_list_fields_still_works(tiny_cache, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(tiny_cache, old)
    man = json.loads((old / "manifest.json").read_text())
    for k in ("split_source", "labeled_lists", "labeled_lists_absent", "default_labeled"):
        man.pop(k)
    (old / "manifest.json").write_text(json.dumps(man))
    c = SliceCache(old)
    assert labeled_split(c, labeled_ratio=0.05).labeled_patients == c.splits["train"][:1]
    with pytest.raises(DataError, match="set data.labeled_patients"):
        labeled_split(c)
