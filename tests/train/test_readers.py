"""Readers: all four raw layouts, spacing preserved, bad files -> errors naming file and problem."""

from __future__ import annotations

import numpy as np
import pytest
from niftilib import write_nifti

from mona.data.readers import (
    ACDC,
    LITS,
    MMWHS,
    DataError,
    folder_spec,
    load_case,
    read_acdc,
    read_folder,
    read_lits,
    read_mmwhs,
)


def _acdc_patient(root, pid="patient001", frames=(1, 12), shape=(20, 24, 5), spacing=(1.5, 1.25, 8.0), seed=0):
    rng = np.random.default_rng(seed)
    d = root / pid
    d.mkdir(parents=True)
    (d / "Info.cfg").write_text(f"ED: {frames[0]}\nES: {frames[1]}\nGroup: NOR\n")
    for f in frames:
        write_nifti(d / f"{pid}_frame{f:02d}.nii.gz", rng.normal(100, 20, shape).astype(np.float32), spacing)
        write_nifti(d / f"{pid}_frame{f:02d}_gt.nii.gz", rng.integers(0, 4, shape).astype(np.uint8), spacing)
    write_nifti(d / f"{pid}_4d.nii.gz", np.zeros(shape + (2,), np.float32), spacing + (1.0,))
    return d


def test_acdc_layout_frames_roles_and_spacing(tmp_path):
    _acdc_patient(tmp_path, "patient001", frames=(1, 12), spacing=(1.5, 1.25, 8.0))
    _acdc_patient(tmp_path, "patient002", frames=(1, 9), spacing=(0.7, 0.7, 10.0), seed=1)
    recs = read_acdc(tmp_path)
    assert [r.case_id for r in recs] == [
        "patient001_frame01",
        "patient001_frame02",
        "patient002_frame01",
        "patient002_frame02",
    ]
    assert recs[1].extra == {"frame": 12, "phase": "ES"} and recs[0].extra["phase"] == "ED"
    vol = load_case(recs[1], ACDC)
    assert vol.spacing == pytest.approx((1.5, 1.25, 8.0))
    assert vol.image.shape == vol.label.shape == (20, 24, 5)
    assert load_case(recs[2], ACDC).spacing == pytest.approx((0.7, 0.7, 10.0))


def test_lits_layout_and_spacing(tmp_path):
    rng = np.random.default_rng(0)
    for n in (0, 3):
        write_nifti(
            tmp_path / f"volume-{n}.nii", rng.integers(-1000, 1000, (16, 16, 4)).astype(np.int16), (0.8, 0.8, 2.5)
        )
        write_nifti(
            tmp_path / f"segmentation-{n}.nii", rng.integers(0, 3, (16, 16, 4)).astype(np.uint8), (0.8, 0.8, 2.5)
        )
    recs = read_lits(tmp_path)
    assert [r.case_id for r in recs] == ["volume-0", "volume-3"]
    vol = load_case(recs[1], LITS)
    assert vol.spacing == pytest.approx((0.8, 0.8, 2.5))
    assert set(np.unique(vol.label)) <= {0, 1, 2}


def test_mmwhs_label_values_are_mapped(tmp_path):
    raw = np.array([0, 205, 420, 500, 550, 600, 820, 850], np.int16)
    lab = np.resize(raw, (8, 8, 2)).astype(np.int16)
    write_nifti(tmp_path / "mr_train_1001_image.nii.gz", np.ones((8, 8, 2), np.float32), (1.0, 1.0, 1.6))
    write_nifti(tmp_path / "mr_train_1001_label.nii.gz", lab, (1.0, 1.0, 1.6))
    (rec,) = read_mmwhs(tmp_path)
    vol = load_case(rec, MMWHS)
    expected = np.searchsorted(raw, lab)  # index of each raw value in the declared order
    np.testing.assert_array_equal(vol.label, expected)
    assert vol.spacing == pytest.approx((1.0, 1.0, 1.6))


def test_generic_folder_layout(tmp_path):
    write_nifti(tmp_path / "images" / "a.nii.gz", np.zeros((8, 8, 3), np.float32), (2.0, 2.0, 3.0))
    write_nifti(tmp_path / "labels" / "a.nii.gz", np.ones((8, 8, 3), np.uint8), (2.0, 2.0, 3.0))
    (rec,) = read_folder(tmp_path)
    vol = load_case(rec, folder_spec(2))
    assert rec.case_id == "a" and vol.spacing == pytest.approx((2.0, 2.0, 3.0))
    write_nifti(tmp_path / "images" / "b.nii.gz", np.zeros((8, 8, 3), np.float32))
    with pytest.raises(DataError, match=r"b\.nii\.gz has no label file"):
        read_folder(tmp_path)


def test_unreadable_file_names_the_file(tmp_path):
    d = _acdc_patient(tmp_path)
    bad = d / "patient001_frame01.nii.gz"
    bad.write_bytes(b"this is not a nifti file")
    rec = read_acdc(tmp_path)[0]
    with pytest.raises(DataError, match=r"patient001_frame01\.nii\.gz: unreadable NIfTI"):
        load_case(rec, ACDC)


def test_shape_mismatch(tmp_path):
    d = _acdc_patient(tmp_path)
    write_nifti(d / "patient001_frame01_gt.nii.gz", np.zeros((20, 24, 4), np.uint8), (1.5, 1.25, 8.0))
    with pytest.raises(DataError, match=r"frame01_gt\.nii\.gz: label shape \(20, 24, 4\) does not match"):
        load_case(read_acdc(tmp_path)[0], ACDC)


def test_affine_mismatch(tmp_path):
    d = _acdc_patient(tmp_path)
    write_nifti(d / "patient001_frame01_gt.nii.gz", np.zeros((20, 24, 5), np.uint8), (1.5, 1.25, 9.0))
    with pytest.raises(DataError, match=r"frame01_gt\.nii\.gz: label affine differs"):
        load_case(read_acdc(tmp_path)[0], ACDC)


def test_labels_outside_declared_classes(tmp_path):
    d = _acdc_patient(tmp_path)
    lab = np.zeros((20, 24, 5), np.uint8)
    lab[0, 0, 0] = 7
    write_nifti(d / "patient001_frame01_gt.nii.gz", lab, (1.5, 1.25, 8.0))
    with pytest.raises(DataError, match=r"frame01_gt\.nii\.gz: label values \[7\] outside the declared classes"):
        load_case(read_acdc(tmp_path)[0], ACDC)
    write_nifti(tmp_path / "x" / "mr_1_image.nii.gz", np.ones((4, 4, 2), np.float32))
    write_nifti(tmp_path / "x" / "mr_1_label.nii.gz", np.full((4, 4, 2), 300, np.int16))
    with pytest.raises(DataError, match=r"mr_1_label\.nii\.gz: label values \[300\] outside the declared values"):
        load_case(read_mmwhs(tmp_path / "x")[0], MMWHS)


def test_empty_volume(tmp_path):
    d = _acdc_patient(tmp_path)
    write_nifti(d / "patient001_frame01.nii.gz", np.zeros((20, 0, 5), np.float32), (1.5, 1.25, 8.0))
    with pytest.raises(DataError, match=r"frame01\.nii\.gz: empty volume"):
        load_case(read_acdc(tmp_path)[0], ACDC)


def test_missing_directory_and_missing_pairs(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_acdc(tmp_path / "nope")
    with pytest.raises(DataError, match="no patientXXX directories"):
        read_acdc(tmp_path)
    write_nifti(tmp_path / "volume-5.nii", np.zeros((4, 4, 2), np.int16))
    with pytest.raises(DataError, match=r"volume-5\.nii has no segmentation-5"):
        read_lits(tmp_path)


def test_phantoms_go_through_the_acdc_reader(tiny_raw):
    recs = read_acdc(tiny_raw)
    assert len(recs) == 10  # 5 patients x (ED, ES)
    vol = load_case(recs[0], ACDC)
    assert set(np.unique(vol.label)) == {0, 1, 2, 3}
    assert vol.spacing[2] > vol.spacing[0]  # anisotropic, from the header
