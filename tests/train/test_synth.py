"""Synthetic phantoms: deterministic for a seed, ACDC layout with header spacing, long-tailed classes."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from mona.data.readers import ACDC, load_case, read_acdc
from mona.data.synth import SynthConfig, write_phantoms

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
