"""prepare: normalisation, resizing, idempotence, resumability, no valid-looking half-written cache;
split sources (authors' lists, random, --splits) and folder class names."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from niftilib import write_nifti

from mona.data.dataset import SliceCache
from mona.data.prepare import normalise_volume, prepare, resize_label_slices
from mona.data.readers import DataError
from mona.errors import UsageError


def _snapshot_arrays(root):
    import nibabel as nib

    return {p.relative_to(root): np.asarray(nib.load(str(p)).dataobj).tobytes() for p in sorted(root.rglob("*.nii.gz"))}


def _snapshot(root):
    return {p.relative_to(root): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()}


def test_cache_contents(tiny_raw, tiny_cache):
    cache = SliceCache(tiny_cache)
    assert cache.size == 32 and cache.class_names == ["background", "RV", "Myo", "LV"]
    assert len(cache.cases) == 10
    sp = cache.splits
    assert len(sp["train"]) == 3 and len(sp["val"]) == 1 and len(sp["test"]) == 1
    img, lab = cache.arrays(0)
    assert img.dtype == np.float32 and lab.dtype == np.uint8 and img.shape[1:] == (32, 32)
    assert isinstance(img, np.memmap)
    assert img.min() >= 0 and img.max() <= 1
    assert set(np.unique(lab)) <= {0, 1, 2, 3}
    case = cache.cases[0]
    assert case["shape"][2] == img.shape[0] and len(case["spacing"]) == 3
    assert os.path.exists(case["image_path"])


def test_prepare_is_idempotent(tiny_raw, tmp_path):
    out = tmp_path / "c"
    first = prepare("acdc", tiny_raw, out, size=32, progress=False)
    before = _snapshot(out)
    again = prepare("acdc", tiny_raw, out, size=32, progress=False)
    assert again.processed == [] and len(again.skipped) == len(first.processed) == 10
    assert _snapshot(out) == before  # nothing rewritten, not even the manifest


def test_interrupted_prepare_leaves_no_valid_cache_and_resumes(tiny_raw, tmp_path):
    out = tmp_path / "c"
    done = []

    def crash_after_three(case_id):
        done.append(case_id)
        if len(done) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare("acdc", tiny_raw, out, size=32, progress=False, _after_volume=crash_after_three)
    assert not (out / "manifest.json").exists()
    with pytest.raises(DataError, match="not a prepared cache"):
        SliceCache(out)
    assert not list(out.rglob("*.tmp"))
    resumed = prepare("acdc", tiny_raw, out, size=32, progress=False)
    assert sorted(resumed.skipped) == sorted(done) and len(resumed.processed) == 7
    clean = prepare("acdc", tiny_raw, tmp_path / "clean", size=32, progress=False)
    a, b = SliceCache(out), SliceCache(tmp_path / "clean")
    for i in range(len(a.cases)):
        np.testing.assert_array_equal(a.arrays(i)[0], b.arrays(i)[0])
        np.testing.assert_array_equal(a.arrays(i)[1], b.arrays(i)[1])
    assert resumed.manifest["cases"] == clean.manifest["cases"]


def test_changed_source_is_reprocessed(tiny_raw, tmp_path):
    import shutil

    raw = tmp_path / "raw"
    shutil.copytree(tiny_raw, raw)
    out = tmp_path / "c"
    prepare("acdc", raw, out, size=32, progress=False)
    f = raw / "patient099" / "patient099_frame01.nii.gz"
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    r = prepare("acdc", raw, out, size=32, progress=False)
    assert r.processed == ["patient099_frame01"]


def test_normalisation():
    x = np.array([[-1000.0, -200.0], [25.0, 900.0]])
    hu = normalise_volume(x, {"kind": "hu_window", "low": -200, "high": 250})
    np.testing.assert_allclose(hu, [[0, 0], [0.5, 1]])
    mm = normalise_volume(np.array([2.0, 4.0, 6.0]), {"kind": "minmax"})
    np.testing.assert_allclose(mm, [0, 0.5, 1])


def test_label_resize_is_nearest():
    rng = np.random.default_rng(0)
    lab = rng.choice([0, 2, 3], size=(37, 23, 2))
    out = resize_label_slices(lab, 64)
    assert out.shape == (2, 64, 64) and set(np.unique(out)) <= {0, 2, 3}


def _lits_raw(root, numbers):
    rng = np.random.default_rng(0)
    for n in numbers:
        write_nifti(root / f"volume-{n}.nii", rng.integers(-500, 500, (16, 16, 2)).astype(np.int16))
        write_nifti(root / f"segmentation-{n}.nii", rng.integers(0, 3, (16, 16, 2)).astype(np.uint8))
    return root


def test_lits_prepare_uses_the_authors_lists(tmp_path):
    raw = _lits_raw(tmp_path / "raw", (0, 2, 3, 100, 130))  # case0001, 0003, 0004 train; case0101, 0131 test
    r = prepare("lits", raw, tmp_path / "a", size=16, seed=3, progress=False)
    a = r.manifest["splits"]
    assert a == {"train": ["volume-2", "volume-0", "volume-3"], "val": [], "test": ["volume-100", "volume-130"]}
    assert r.manifest["split_source"] == "the MONA authors' lists (mona/data/splits/lits)"
    assert r.manifest["labeled_lists"]["0.01"] == ["volume-2"]
    assert any("5 of the 131 listed volumes are present" in n for n in r.notes)
    # the seed does not matter for listed volumes; the manifest is rewritten only if something changed
    man = tmp_path / "a" / "manifest.json"
    before = man.stat().st_mtime_ns
    again = prepare("lits", raw, tmp_path / "a", size=16, seed=7, progress=False)
    assert again.manifest["splits"] == a and again.processed == []
    assert json.loads(man.read_text())["seed"] == 7 and man.stat().st_mtime_ns != before
    assert json.loads(man.read_text())["normalisation"] == {"kind": "hu_window", "low": -200.0, "high": 250.0}


def test_lits_unlisted_volume_is_an_error_before_processing(tmp_path):
    raw = _lits_raw(tmp_path / "raw", (0, 131, 140))
    with pytest.raises(
        DataError,
        match=r"volume-131, volume-140 are in neither train_all\.list nor test\.list"
        r".*--splits DIR",
    ):
        prepare("lits", raw, tmp_path / "c", size=16, progress=False)
    assert not (tmp_path / "c").exists()


def test_folder_random_split_and_class_names(tmp_path):
    rng = np.random.default_rng(0)
    for n in "abcdefgh":
        write_nifti(tmp_path / "raw" / "images" / f"{n}.nii.gz", rng.normal(0, 1, (8, 8, 2)).astype(np.float32))
        write_nifti(tmp_path / "raw" / "labels" / f"{n}.nii.gz", rng.integers(0, 3, (8, 8, 2)).astype(np.uint8))
    raw = tmp_path / "raw"
    r = prepare("folder", raw, tmp_path / "a", size=16, seed=3, class_names=["bg", "liver", "tumour"], progress=False)
    m = r.manifest
    assert m["class_names"] == ["bg", "liver", "tumour"] and m["num_classes"] == 3
    assert len(m["splits"]["test"]) == 2 and m["split_source"] == "seeded random split by patient (seed 3)"
    assert SliceCache(tmp_path / "a").class_names == ["bg", "liver", "tumour"]
    b = prepare("folder", raw, tmp_path / "b", size=16, seed=3, num_classes=3, progress=False).manifest
    assert b["splits"] == m["splits"] and b["class_names"] == ["background", "class1", "class2"]
    with pytest.raises(UsageError, match=r"--class-names gives 3 names \(bg, liver, tumour\) but --num-classes is 4"):
        prepare(
            "folder", raw, tmp_path / "c", size=16, num_classes=4, class_names=["bg", "liver", "tumour"], progress=False
        )
    with pytest.raises(UsageError, match="--class-names repeats liver"):
        prepare("folder", raw, tmp_path / "c", size=16, class_names=["bg", "liver", "liver"], progress=False)
    with pytest.raises(UsageError, match="--num-classes \\(or --class-names\\) is required"):
        prepare("folder", raw, tmp_path / "c", size=16, progress=False)
    with pytest.raises(UsageError, match="--class-names applies to the folder layout only"):
        prepare("lits", raw, tmp_path / "c", size=16, class_names=["bg", "liver", "tumour"], progress=False)
    # labels outside the named classes are caught, naming the file and the class names
    with pytest.raises(DataError, match=r"label values \[2\] outside the declared classes 0\.\.1 \(bg, fg\)"):
        prepare("folder", raw, tmp_path / "c", size=16, class_names=["bg", "fg"], progress=False)


def test_cli_prepare_class_names_and_splits(tmp_path, capsys):
    from mona.cli import main

    rng = np.random.default_rng(0)
    for n in "abcd":
        write_nifti(tmp_path / "raw" / "images" / f"{n}.nii.gz", rng.normal(0, 1, (8, 8, 2)).astype(np.float32))
        write_nifti(tmp_path / "raw" / "labels" / f"{n}.nii.gz", rng.integers(0, 3, (8, 8, 2)).astype(np.uint8))
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train.list").write_text("a\nb\n")
    (lists / "val.list").write_text("c\n")
    (lists / "test.list").write_text("d\n")
    args = ["prepare", "folder", str(tmp_path / "raw"), str(tmp_path / "c"), "--size", "16", "--no-progress"]
    assert main(args + ["--class-names", "bg, liver ,tumour", "--splits", str(lists)]) == 0
    out = capsys.readouterr().out
    assert "train/val/test = 2/1/1" in out and "classes: bg, liver, tumour" in out and "user lists" in out
    (lists / "test.list").write_text("d\nb\n")
    assert main(args + ["--num-classes", "3", "--splits", str(lists)]) == 1
    assert "test.list: line 2: patient 'b' is also in train.list" in capsys.readouterr().err
    assert main(args + ["--num-classes", "2", "--class-names", "bg,liver,tumour"]) == 2  # usage errors: exit 2
    assert "--num-classes is 2" in capsys.readouterr().err
    assert main(["prepare", "lits", str(tmp_path / "raw"), str(tmp_path / "l"), "--class-names", "a,b"]) == 2
    assert "--class-names applies to the folder layout only" in capsys.readouterr().err


def test_phantom_dataset_round_trip_of_tail_phantoms(tmp_path, capsys):
    from mona.cli import main
    from mona.data.synth import SynthConfig, write_phantoms
    from mona.eval.report import spec_from_manifest

    raw = tmp_path / "raw"
    small = dict(n_train=3, n_val=1, n_test=1, seed=7, size_min=48, size_max=60, slices_min=3, slices_max=4)
    opts = "--train 3 --val 1 --test 1 --seed 7 --size-min 48 --size-max 60 --slices-min 3 --slices-max 4"
    assert main(["synth", str(raw), "--tail", "--no-progress", *opts.split()]) == 0
    assert "mona prepare phantom" in capsys.readouterr().out
    write_phantoms(tmp_path / "api", SynthConfig(**small, tail=True), progress=False)
    assert _snapshot_arrays(raw) == _snapshot_arrays(tmp_path / "api")  # `mona synth --tail` = SynthConfig(tail=True)
    r = prepare("phantom", raw, tmp_path / "c", size=32, progress=False)
    man = r.manifest
    assert man["dataset"] == "phantom" and man["num_classes"] == 5
    assert man["class_names"] == ["background", "RV", "Myo", "LV", "PM"]
    assert man["split_source"] == "the shipped SSL4MIS lists (mona/data/splits/acdc)"
    assert man["splits"] == {
        "train": ["patient099", "patient038", "patient050"],
        "val": ["patient028"],
        "test": ["patient011"],
    }
    assert all(c["class_voxels"][4] > 0 for c in man["cases"])
    cache = SliceCache(tmp_path / "c")
    assert cache.num_classes == 5 and cache.class_names == man["class_names"]
    assert 4 in set(np.unique(np.concatenate([cache.arrays(i)[1].ravel() for i in range(len(cache.cases))])))
    assert spec_from_manifest(man).num_classes == 5  # what evaluation loads the volumes with
    # the CLI lists the dataset and prints its classes
    args = ["prepare", "phantom", str(raw), str(tmp_path / "c2"), "--size", "32", "--no-progress"]
    assert main(args) == 0
    assert "classes: background, RV, Myo, LV, PM" in capsys.readouterr().out


def test_acdc_rejects_tail_phantoms(tmp_path):
    from mona.data.synth import SynthConfig, write_phantoms

    raw = tmp_path / "raw"
    write_phantoms(
        raw,
        SynthConfig(
            n_train=1, n_val=0, n_test=0, seed=7, size_min=40, size_max=48, slices_min=3, slices_max=3, tail=True
        ),
        progress=False,
    )
    with pytest.raises(
        DataError,
        match=r"patient099_frame01_gt\.nii\.gz: label values \[4\] outside the declared classes 0\.\.3 "
        r"\(background, RV, Myo, LV\)",
    ):
        prepare("acdc", raw, tmp_path / "c", size=32, progress=False)
    assert not (tmp_path / "c" / "manifest.json").exists()
