"""Synthetic phantoms: deterministic for a seed, ACDC layout with header spacing, long-tailed classes; the
long-tail PM class of ``tail=True``."""

from __future__ import annotations

import hashlib

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from mona.data.readers import ACDC, load_case, read_acdc
from mona.data.synth import PM_FRACTION, PM_LABEL, SynthConfig, write_phantoms

SMALL = SynthConfig(n_train=2, n_val=0, n_test=1, seed=3, size_min=40, size_max=56, slices_min=3, slices_max=5)


def _arrays(root):
    return {p.relative_to(root): np.asarray(nib.load(str(p)).dataobj) for p in sorted(root.rglob("*.nii.gz"))}


def test_deterministic_for_a_seed(tmp_path):
    write_phantoms(tmp_path / "a", SMALL, progress=False)
    write_phantoms(tmp_path / "b", SMALL, progress=False)
    a, b = _arrays(tmp_path / "a"), _arrays(tmp_path / "b")
    assert a.keys() == b.keys() and len(a) == 3 * 4
    assert all(np.array_equal(a[k], b[k]) for k in a)
    other = SynthConfig(**{**SMALL.__dict__, "seed": 4})
    write_phantoms(tmp_path / "c", other, progress=False)
    c = _arrays(tmp_path / "c")
    assert any(a[k].shape != c[k].shape or not np.array_equal(a[k], c[k]) for k in a)


def test_layout_spacing_and_class_frequencies(tmp_path):
    cfg = SynthConfig(n_train=6, n_val=0, n_test=0, seed=0)
    ids = write_phantoms(tmp_path, cfg, progress=False)
    assert ids[:3] == ["patient099", "patient038", "patient050"]  # first labeled patients of the ACDC list
    assert (tmp_path / "patient099" / "Info.cfg").read_text().startswith("ED: 1\nES: ")
    counts = np.zeros(4)
    sizes, spacings = set(), set()
    for rec in read_acdc(tmp_path):
        vol = load_case(rec, ACDC)
        hdr = nib.load(rec.image_path).header.get_zooms()
        assert vol.spacing == tuple(float(z) for z in hdr)
        spacings.add(vol.spacing)
        sizes.add(vol.image.shape)
        counts += np.bincount(vol.label.ravel(), minlength=4)
    freq = counts / counts.sum()
    assert freq[0] > 0.85 and (freq[1:] > 0.002).all()  # long-tailed, every class present
    assert freq[1] < freq[2]  # RV is the rarest structure here
    assert len(sizes) > 3 and len(spacings) > 3  # shapes and spacings vary per patient


# --------------------------------------------------------------------------- long-tail phantoms (tail=True)

# Digests of the phantoms written by the generator as it was before the tail option existed (commit 6742b8c):
# tail=False must keep writing exactly these files. (They depend on numpy's Generator streams and scipy's
# gaussian_filter staying bit-stable; a version change of either that moves them moves every phantom.)
PLAIN_DIGESTS = {
    SMALL: "1d2aaac76bcd2d1c07935147e5b810b1cfd7ef5cec8c683de533852992275856",
    SynthConfig(
        n_train=1, n_val=1, n_test=0, seed=0
    ): "c964cfce53fed869944ce11e06508f2bd26bc203b06489ebccabf9d2673113f8",
}
TAIL_SMALL = SynthConfig(**{**SMALL.__dict__, "tail": True})


def _digest(root):
    """SHA-256 over every file's relative path and content (NIfTI: dtype, shape, zooms and voxel data)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        h.update(str(p.relative_to(root)).encode())
        if p.name.endswith(".nii.gz"):
            img = nib.load(str(p))
            a = np.asarray(img.dataobj)
            h.update(f"{a.dtype}{a.shape}{tuple(float(z) for z in img.header.get_zooms())}".encode())
            h.update(a.tobytes())
        else:
            h.update(p.read_bytes())
    return h.hexdigest()


def _pairs(root):
    """(image, label) arrays of every annotated frame, NIfTI order [X, Y, Z], by case id."""
    out = {}
    for rec in read_acdc(root):
        out[rec.case_id] = (
            np.asarray(nib.load(rec.image_path).dataobj).astype(np.float64),
            np.asarray(nib.load(rec.label_path).dataobj),
        )
    return out


@pytest.fixture(scope="module")
def plain_and_tail(tmp_path_factory):
    root = tmp_path_factory.mktemp("tail")
    write_phantoms(root / "plain", SMALL, progress=False)
    write_phantoms(root / "tail", TAIL_SMALL, progress=False)
    return root / "plain", root / "tail"


@pytest.mark.parametrize("cfg", list(PLAIN_DIGESTS), ids=["small", "default_size"])
def test_tail_false_is_bit_identical_to_the_generator_before_the_option(tmp_path, cfg):
    assert cfg.tail is False
    write_phantoms(tmp_path, cfg, progress=False)
    assert _digest(tmp_path) == PLAIN_DIGESTS[cfg]


def test_tail_is_deterministic_for_a_seed(plain_and_tail, tmp_path):
    _, tail = plain_and_tail
    write_phantoms(tmp_path / "again", TAIL_SMALL, progress=False)
    assert _digest(tmp_path / "again") == _digest(tail)
    write_phantoms(tmp_path / "other", SynthConfig(**{**TAIL_SMALL.__dict__, "seed": 4}), progress=False)
    assert _digest(tmp_path / "other") != _digest(tail)


def test_pm_class_exists_only_with_tail_and_is_carved_out_of_lv(plain_and_tail):
    plain, tail = (_pairs(r) for r in plain_and_tail)
    assert plain.keys() == tail.keys() and len(plain) == 6
    assert all(set(np.unique(lab)) <= {0, 1, 2, 3} for _, lab in plain.values())
    for case, (img_t, lab_t) in tail.items():
        img_p, lab_p = plain[case]
        pm = lab_t == PM_LABEL
        assert pm.any(), case
        assert set(np.unique(lab_t)) == {0, 1, 2, 3, PM_LABEL}
        # only LV pixels change class, and only to PM: RV, Myo and background are untouched
        changed = lab_t != lab_p
        assert np.array_equal(changed, pm) and (lab_p[pm] == 3).all()
        # the image changes only in and around the blobs (the 0.7 px partial-volume blur reaches 3 px)
        near = ndimage.binary_dilation(pm, structure=np.ones((3, 3, 1), bool), iterations=3)
        assert (img_t != img_p).any() and (img_t[~near] == img_p[~near]).all()
        # basal/mid slices only: present from the base (z = 0) on, absent at the apex
        present = pm.any(axis=(0, 1))
        n = int(present.sum())
        assert 1 <= n < present.size and present[:n].all(), (case, present)
        # attached to or next to the myocardium: every blob is within 2 px of it
        myo = ndimage.binary_dilation(lab_t == 2, structure=np.ones((3, 3, 1), bool), iterations=2)
        in_plane = np.zeros((3, 3, 3), bool)
        in_plane[:, :, 1] = True  # blobs of each slice, 8-connected
        blobs, k = ndimage.label(pm, structure=in_plane)
        assert k >= n
        assert all((myo & (blobs == i)).any() for i in range(1, k + 1)), case


@pytest.fixture(scope="module")
def tail_default_size(tmp_path_factory):
    """8 tail patients at the default sizes (112-144 px, 5-9 slices), seed 0."""
    root = tmp_path_factory.mktemp("tail_default")
    write_phantoms(root, SynthConfig(n_train=8, n_val=0, n_test=0, seed=0, tail=True), progress=False)
    return _pairs(root)


def test_pm_covers_1_to_2_percent_of_the_foreground_where_present(tail_default_size):
    fractions = []
    for _, lab in tail_default_size.values():
        for z in range(lab.shape[2]):
            s = lab[:, :, z]
            if (s == PM_LABEL).any():
                fractions.append((s == PM_LABEL).sum() / (s > 0).sum())
    fractions = np.array(fractions)
    assert len(fractions) > 50
    # docs/training.md: measured 1.06-1.95 % (median 1.39 %) over the PM slices of 16 patients, seed 0
    assert PM_FRACTION == (0.01, 0.02)
    assert fractions.min() >= 0.01 and fractions.max() <= 0.02
    assert 0.012 < np.median(fractions) < 0.017
    assert fractions.max() - fractions.min() > 0.005  # the fraction is drawn per patient, not a constant


def test_pm_contrast_varies_strongly_by_patient(tail_default_size):
    ratio: dict[str, list[float]] = {}
    for case, (img, lab) in tail_default_size.items():
        ratio.setdefault(case.split("_")[0], []).append(img[lab == PM_LABEL].mean() / img[lab == 3].mean())
    per_patient = {p: float(np.mean(r)) for p, r in ratio.items()}
    assert len(per_patient) == 8
    # docs/training.md: mean PM / mean LV intensity 0.48-0.93 over 16 patients (seed 0): from clearly
    # visible (about halfway to the myocardium) to faint
    values = sorted(per_patient.values())
    assert 0.45 < values[0] < 0.6 and 0.8 < values[-1] < 0.95, per_patient
    assert all(v < 0.95 for v in values)  # always darker than the blood pool
    # a patient property: ED and ES of one patient agree far better than patients differ (0.48 to 0.84 here)
    spread = values[-1] - values[0]
    assert spread > 0.3 and max(abs(r[0] - r[1]) for r in ratio.values()) < spread / 5
