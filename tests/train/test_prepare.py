"""prepare: normalisation, resizing, idempotence, resumability, no valid-looking half-written cache."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from mona.data.dataset import SliceCache
from mona.data.prepare import normalise_volume, prepare, resize_label_slices
from mona.data.readers import DataError

from conftest import write_nifti


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


def test_lits_prepare_uses_seeded_patient_split(tmp_path):
    rng = np.random.default_rng(0)
    for n in range(8):
        write_nifti(tmp_path / "raw" / f"volume-{n}.nii", rng.integers(-500, 500, (16, 16, 2)).astype(np.int16))
        write_nifti(tmp_path / "raw" / f"segmentation-{n}.nii", rng.integers(0, 3, (16, 16, 2)).astype(np.uint8))
    a = prepare("lits", tmp_path / "raw", tmp_path / "a", size=16, seed=3, progress=False).manifest["splits"]
    b = prepare("lits", tmp_path / "raw", tmp_path / "b", size=16, seed=3, progress=False).manifest["splits"]
    assert a == b and len(a["test"]) == round(8 * 31 / 131) and not set(a["test"]) & set(a["train"])
    man = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert man["normalisation"] == {"kind": "hu_window", "low": -200.0, "high": 250.0}
