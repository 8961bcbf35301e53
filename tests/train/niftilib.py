"""NIfTI files for the tests (a module of its own: test files import it by name, and every test
directory has a conftest.py, so `from conftest import ...` would pick whichever was imported first)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np


def write_nifti(path: Path, arr: np.ndarray, spacing=(1.0, 1.0, 1.0), affine: np.ndarray | None = None) -> Path:
    """Write ``arr`` with ``spacing`` in the header (affine = diag(spacing) unless given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    aff = np.diag([*spacing[:3], 1.0]) if affine is None else affine
    img = nib.Nifti1Image(arr, aff)
    img.header.set_zooms(spacing[: arr.ndim])
    nib.save(img, str(path))
    return path
