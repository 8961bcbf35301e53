"""Readers for the raw public layouts (ACDC, LiTS, MMWHS, a generic folder of image/label pairs).

``phantom`` (the tail phantoms of ``mona synth --tail``) is the ACDC layout and reader with a fifth class.

A reader turns a raw directory into a list of :class:`CaseRecord` (paths only, nothing loaded);
:func:`load_case` loads one record into a :class:`Volume` and validates it. Arrays keep the
NIfTI voxel order ``[X, Y, Z]``; slices are taken along the last axis (Z). The spacing
(mm per voxel, ``[sx, sy, sz]``) comes from the header and travels with the volume to the metrics.

Every problem with a file raises :class:`DataError` naming the file and what was wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError, MissingFileError, UsageError  # DataError re-exported: mona.data.readers.DataError


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset is: class names, modality and how raw label values map to class indices."""

    name: str
    class_names: tuple[str, ...]
    modality: str  # "MR" (min-max per volume) or "CT" (HU window)
    label_values: tuple[int, ...] | None = None  # raw value of class i (None: identity 0..C-1)
    hu_window: tuple[float, float] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def normalisation(self) -> dict:
        if self.modality == "CT":
            assert self.hu_window is not None
            return {"kind": "hu_window", "low": self.hu_window[0], "high": self.hu_window[1]}
        return {"kind": "minmax"}


ACDC = DatasetSpec("acdc", ("background", "RV", "Myo", "LV"), "MR")
LITS = DatasetSpec("lits", ("background", "liver", "tumor"), "CT", hu_window=(-200.0, 250.0))
MMWHS = DatasetSpec(
    "mmwhs",
    ("background", "LV-myo", "LA", "LV", "RA", "RV", "AAo", "PA"),
    "MR",
    label_values=(0, 205, 420, 500, 550, 600, 820, 850),
)
#: ``mona synth --tail`` phantoms: the ACDC layout and splits plus the long-tail class 4 (papillary-muscle-like)
PHANTOM = DatasetSpec("phantom", ("background", "RV", "Myo", "LV", "PM"), "MR")
SPECS: dict[str, DatasetSpec] = {s.name: s for s in (ACDC, LITS, MMWHS, PHANTOM)}


@dataclass(frozen=True)
class CaseRecord:
    """One image volume (and its label, if any) on disk.

    ``case_id`` is unique within a dataset (e.g. ``patient001_frame01``); ``patient_id`` groups the
    cases of one patient (splits are by patient). ``extra`` holds reader-specific facts (e.g. the
    real ACDC frame number and its ED/ES role).
    """

    case_id: str
    patient_id: str
    image_path: str
    label_path: str | None
    extra: dict = field(default_factory=dict, compare=False)


@dataclass
class Volume:
    """A loaded, validated volume.

    image: float32 ``[X, Y, Z]`` raw intensities; label: int64 ``[X, Y, Z]`` class indices in
    ``[0, num_classes)`` or None; spacing: mm per voxel ``(sx, sy, sz)``; affine: 4x4 voxel->world.
    """

    record: CaseRecord
    image: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, float, float]
    affine: np.ndarray


_NII = (".nii.gz", ".nii")


def _strip_nii(name: str) -> str | None:
    for ext in _NII:
        if name.endswith(ext):
            return name[: -len(ext)]
    return None


def _require_dir(raw_dir: str | Path, what: str) -> Path:
    raw = Path(raw_dir)
    if not raw.is_dir():
        raise DataError(f"{what}: raw directory {str(raw)!r} does not exist or is not a directory")
    return raw


def parse_info_cfg(path: Path) -> dict[str, str]:
    """Parse an ACDC ``Info.cfg`` (``Key: value`` lines)."""
    try:
        text = path.read_text()
    except OSError as err:
        raise DataError(f"{path}: cannot read Info.cfg ({err})") from err
    out: dict[str, str] = {}
    for line in text.splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            out[key.strip()] = value.strip()
    return out


def read_acdc(raw_dir: str | Path) -> list[CaseRecord]:
    """ACDC layout: ``patientXXX/patientXXX_frameYY.nii.gz`` + ``..._gt.nii.gz`` and ``Info.cfg``.

    The annotated frames of a patient (those with a ``_gt`` file) are sorted by frame number and
    named ``patientXXX_frame01`` / ``patientXXX_frame02`` (the split lists' convention); the real
    frame number and its role (ED/ES from Info.cfg) are kept in ``extra``.
    """
    raw = _require_dir(raw_dir, "acdc")
    records: list[CaseRecord] = []
    patient_dirs = sorted(p for p in raw.iterdir() if p.is_dir() and re.fullmatch(r"patient\d{3}", p.name))
    if not patient_dirs:
        raise DataError(f"acdc: no patientXXX directories in {str(raw)!r}")
    pat = re.compile(r"(patient\d{3})_frame(\d{2})")
    for pdir in patient_dirs:
        info_path = pdir / "Info.cfg"
        info = parse_info_cfg(info_path) if info_path.exists() else {}
        roles = {}
        for role in ("ED", "ES"):
            if role in info:
                try:
                    roles[int(info[role])] = role
                except ValueError as err:
                    raise DataError(f"{info_path}: {role} is not an integer frame ({info[role]!r})") from err
        frames: list[tuple[int, Path, Path]] = []
        for f in sorted(pdir.iterdir()):
            stem = _strip_nii(f.name)
            if stem is None or stem.endswith("_gt"):
                continue
            m = pat.fullmatch(stem)
            if not m or m.group(1) != pdir.name:
                continue  # e.g. patientXXX_4d.nii.gz
            gt = None
            for ext in _NII:
                cand = pdir / f"{stem}_gt{ext}"
                if cand.exists():
                    gt = cand
                    break
            if gt is None:
                continue  # unannotated frame
            frames.append((int(m.group(2)), f, gt))
        if not frames:
            raise DataError(f"{pdir}: no annotated frame (patientXXX_frameYY.nii.gz with a _gt file)")
        for k, (frame, img, gt) in enumerate(sorted(frames)):
            records.append(
                CaseRecord(
                    case_id=f"{pdir.name}_frame{k + 1:02d}",
                    patient_id=pdir.name,
                    image_path=str(img),
                    label_path=str(gt),
                    extra={"frame": frame, "phase": roles.get(frame, "unknown")},
                )
            )
    return records


def read_lits(raw_dir: str | Path) -> list[CaseRecord]:
    """LiTS layout: ``volume-N.nii`` + ``segmentation-N.nii`` (optionally ``.nii.gz``), any subfolders.

    case_id = patient_id = ``volume-N``. The MONA authors' split lists name the volumes ``caseNNNN``
    (1..131); they map to ``volume-N`` with N = NNNN - 1 (see :mod:`mona.data.splits`).
    """
    raw = _require_dir(raw_dir, "lits")
    images: dict[int, Path] = {}
    labels: dict[int, Path] = {}
    for f in raw.rglob("*"):
        stem = _strip_nii(f.name)
        if stem is None:
            continue
        m = re.fullmatch(r"(volume|segmentation)-(\d+)", stem)
        if m:
            (images if m.group(1) == "volume" else labels)[int(m.group(2))] = f
    if not images:
        raise DataError(f"lits: no volume-N.nii files in {str(raw)!r}")
    missing = sorted(set(images) - set(labels))
    if missing:
        raise DataError(f"lits: {images[missing[0]]} has no segmentation-{missing[0]}.nii")
    return [CaseRecord(f"volume-{n}", f"volume-{n}", str(images[n]), str(labels[n])) for n in sorted(images)]


def read_mmwhs(raw_dir: str | Path) -> list[CaseRecord]:
    """MMWHS layout: ``*_image.nii(.gz)`` + ``*_label.nii(.gz)`` (e.g. ``mr_train_1001_image.nii.gz``).

    case_id = patient_id = the name before ``_image`` (``ct_train_1001``, ``mr_train_1001``): the
    names of the MONA authors' lists (CT only). CT and MR use the same spec (labels, min-max).
    """
    return _read_suffix_pairs(raw_dir, "mmwhs", "_image", "_label")


def _read_suffix_pairs(raw_dir: str | Path, what: str, img_suffix: str, lab_suffix: str) -> list[CaseRecord]:
    raw = _require_dir(raw_dir, what)
    images: dict[str, Path] = {}
    labels: dict[str, Path] = {}
    for f in raw.rglob("*"):
        stem = _strip_nii(f.name)
        if stem is None:
            continue
        if stem.endswith(img_suffix):
            images[stem[: -len(img_suffix)]] = f
        elif stem.endswith(lab_suffix):
            labels[stem[: -len(lab_suffix)]] = f
    if not images:
        raise DataError(f"{what}: no *{img_suffix}.nii(.gz) files in {str(raw)!r}")
    missing = sorted(set(images) - set(labels))
    if missing:
        raise DataError(f"{what}: {images[missing[0]]} has no matching *{lab_suffix}.nii(.gz) file")
    return [CaseRecord(k, k, str(images[k]), str(labels[k])) for k in sorted(images)]


def read_folder(raw_dir: str | Path) -> list[CaseRecord]:
    """Generic layout: ``RAW/images/NAME.nii(.gz)`` and ``RAW/labels/NAME.nii(.gz)`` (same NAME).

    Each volume is its own patient. Labels must already be class indices 0..C-1.
    """
    raw = _require_dir(raw_dir, "folder")
    img_dir, lab_dir = raw / "images", raw / "labels"
    if not img_dir.is_dir() or not lab_dir.is_dir():
        raise DataError(f"folder: {str(raw)!r} must contain images/ and labels/ subdirectories")
    labels = {_strip_nii(f.name): f for f in lab_dir.iterdir() if _strip_nii(f.name)}
    records = []
    for f in sorted(img_dir.iterdir()):
        stem = _strip_nii(f.name)
        if stem is None:
            continue
        if stem not in labels:
            raise DataError(f"folder: {f} has no label file labels/{stem}.nii(.gz)")
        records.append(CaseRecord(stem, stem, str(f), str(labels[stem])))
    if not records:
        raise DataError(f"folder: no .nii/.nii.gz images in {str(img_dir)!r}")
    return records


READERS = {"acdc": read_acdc, "lits": read_lits, "mmwhs": read_mmwhs, "folder": read_folder, "phantom": read_acdc}


def folder_spec(num_classes: int | None, modality: str = "MR", class_names=None) -> DatasetSpec:
    """Spec for the generic layout; labels are used as they are (class indices 0..C-1).

    ``class_names`` (``--class-names bg,liver,tumour``) names the classes in index order and implies
    ``num_classes`` (if both are given they must agree); default names: ``background, class1, ...``.
    """
    if class_names is not None:
        names = [str(n).strip() for n in class_names]
        if any(not n for n in names):
            raise UsageError(f"folder: --class-names {','.join(names)!r} has an empty name")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise UsageError(f"folder: --class-names repeats {', '.join(dup)}")
        if num_classes is not None and num_classes != len(names):
            raise UsageError(
                f"folder: --class-names gives {len(names)} names ({', '.join(names)}) but --num-classes "
                f"is {num_classes}; they must agree (or omit --num-classes)"
            )
        num_classes = len(names)
    if num_classes is None:
        raise UsageError("folder: --num-classes (or --class-names) is required for the generic layout")
    if num_classes < 2:
        raise UsageError(f"folder: num_classes must be >= 2 (background + at least one class), got {num_classes}")
    if modality not in ("MR", "CT"):
        raise UsageError(f"folder: modality must be MR or CT, got {modality!r}")
    if class_names is None:
        names = ["background"] + [f"class{i}" for i in range(1, num_classes)]
    return DatasetSpec("folder", tuple(names), modality, hu_window=(-200.0, 250.0) if modality == "CT" else None)


def _check_nifti_header(p: Path) -> None:
    """The header's bytes: present (not cut short), gzip intact as far as it goes, size 348 and magic
    ``n+1``/``ni1`` (NIfTI-1) or size 540 and ``n+2``/``ni2`` (NIfTI-2). DataError naming the file."""
    import gzip
    import zlib

    try:
        if p.name.endswith(".gz"):
            with gzip.open(p, "rb") as fh:
                head = fh.read(544)
        else:
            with open(p, "rb") as fh:
                head = fh.read(544)
    except gzip.BadGzipFile as err:
        if p.stat().st_size < 18 and p.read_bytes()[:1] == b"\x1f":  # 18: the smallest complete gzip file
            raise DataError(f"{p}: unreadable NIfTI file: truncated ({p.stat().st_size} bytes of gzip)") from err
        raise DataError(f"{p}: unreadable NIfTI file: not a gzip file, but named .gz ({err})") from err
    except (EOFError, zlib.error) as err:
        raise DataError(
            f"{p}: unreadable NIfTI file: header truncated or corrupt (gzip: {type(err).__name__})"
        ) from err
    except OSError as err:
        raise DataError(f"{p}: unreadable NIfTI file: cannot read ({err.strerror or err})") from err
    sizes = {int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big")} if len(head) >= 4 else set()
    if 348 in sizes:
        need, magic, ok = 348, head[344:348], (b"n+1\0", b"ni1\0")
    elif 540 in sizes:
        need, magic, ok = 540, head[4:8], (b"n+2\0", b"ni2\0")
    else:
        if len(head) < 4:
            raise DataError(f"{p}: unreadable NIfTI file: truncated ({len(head)} bytes, the header alone has 348)")
        raise DataError(
            f"{p}: unreadable NIfTI file: wrong header size field {head[:4].hex()} (neither 348 nor 540): not NIfTI"
        )
    if len(head) < need:
        raise DataError(f"{p}: unreadable NIfTI file: header truncated ({len(head)} of {need} bytes)")
    if magic not in ok:
        raise DataError(
            f"{p}: unreadable NIfTI file: wrong magic {magic!r} (expected {ok[0]!r} or {ok[1]!r}): not NIfTI"
        )
    # voxel spacing: nibabel silently replaces a zero pixdim by 1 (wrong distances in every metric)
    order = "<" if int.from_bytes(head[:4], "little") == need else ">"
    if need == 348:
        ndim = int(np.frombuffer(head[40:42], order + "i2")[0])
        pixdim = np.frombuffer(head[76:108], order + "f4")
    else:
        ndim = int(np.frombuffer(head[16:24], order + "i8")[0])
        pixdim = np.frombuffer(head[104:168], order + "f8")
    spacing = pixdim[1 : 1 + min(max(ndim, 0), 3)]
    if not (np.isfinite(spacing).all() and (spacing > 0).all()):
        raise DataError(f"{p}: invalid voxel spacing {tuple(float(x) for x in spacing)} in the header (pixdim)")


def load_nifti(path: str):
    """(nibabel image, array) of a NIfTI file; :class:`DataError` naming the file if it is missing, a
    directory, empty, not NIfTI (wrong magic), or truncated / corrupt."""
    import nibabel as nib

    p = Path(path)
    if not p.exists():
        raise MissingFileError(f"{path}: file does not exist")
    if p.is_dir():
        raise DataError(f"{path}: is a directory, not a NIfTI file")
    if p.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    _check_nifti_header(p)
    try:
        img = nib.load(str(p))
    except Exception as err:  # nibabel raises many types for files it cannot parse
        first = (str(err).strip().splitlines() or [""])[0]
        raise DataError(
            f"{path}: unreadable NIfTI file: header truncated or corrupt ({type(err).__name__}: {first})"
        ) from err
    try:
        data = np.asarray(img.dataobj)
    except Exception as err:  # gzip / zlib / numpy errors of a cut or damaged file
        first = (str(err).strip().splitlines() or [""])[0]
        raise DataError(
            f"{path}: unreadable NIfTI file: truncated or corrupt data ({type(err).__name__}: {first})"
        ) from err
    return img, data


def load_case(record: CaseRecord, spec: DatasetSpec, *, require_label: bool = True) -> Volume:
    """Load and validate one case.

    Checks: readable files, 3-D image (a 2-D image becomes ``[X, Y, 1]``), non-empty, finite,
    label of the same shape and affine, label values among the declared classes.
    """
    img, data = load_nifti(record.image_path)
    if data.size == 0:
        raise DataError(
            f"{record.image_path}: empty volume (shape {tuple(data.shape)}, header dims "
            f"{tuple(int(d) for d in img.header['dim'][1 : img.header['dim'][0] + 1])})"
        )
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"{record.image_path}: expected a 3-D image, got shape {tuple(data.shape)}")
    image = data.astype(np.float32)
    if not np.isfinite(image).all():
        raise DataError(f"{record.image_path}: image contains NaN or infinite values")
    zooms = img.header.get_zooms()[:3]
    spacing = tuple(float(z) for z in (list(zooms) + [1.0] * 3)[:3])
    if any(not np.isfinite(s) or s <= 0 for s in spacing):
        raise DataError(f"{record.image_path}: invalid voxel spacing {spacing} in the header")
    affine = np.asarray(img.affine, dtype=np.float64)
    label = None
    if record.label_path is not None:
        limg, ldata = load_nifti(record.label_path)
        if ldata.ndim == 2:
            ldata = ldata[..., None]
        if ldata.ndim == 4 and ldata.shape[-1] == 1:
            ldata = ldata[..., 0]
        if tuple(ldata.shape) != tuple(image.shape):
            raise DataError(
                f"{record.label_path}: label shape {tuple(ldata.shape)} does not match image shape "
                f"{tuple(image.shape)} of {record.image_path}"
            )
        if not np.allclose(np.asarray(limg.affine), affine, atol=1e-3):
            raise DataError(f"{record.label_path}: label affine differs from the affine of {record.image_path}")
        label = _map_labels(ldata, spec, record.label_path)
    elif require_label:
        raise DataError(f"{record.image_path}: no label file for this case")
    return Volume(record, image, label, spacing, affine)


def _map_labels(raw: np.ndarray, spec: DatasetSpec, path: str) -> np.ndarray:
    if np.issubdtype(raw.dtype, np.floating):
        if not np.isfinite(raw).all() or not np.array_equal(raw, np.round(raw)):
            raise DataError(f"{path}: label volume has non-integer values")
    raw = raw.astype(np.int64)
    values = np.unique(raw)
    if spec.label_values is None:
        bad = values[(values < 0) | (values >= spec.num_classes)]
        if bad.size:
            raise DataError(
                f"{path}: label values {bad.tolist()} outside the declared classes "
                f"0..{spec.num_classes - 1} ({', '.join(spec.class_names)})"
            )
        return raw
    lut = {v: i for i, v in enumerate(spec.label_values)}
    bad = [int(v) for v in values if int(v) not in lut]
    if bad:
        raise DataError(f"{path}: label values {bad} outside the declared values {list(spec.label_values)}")
    out = np.zeros_like(raw)
    for v, i in lut.items():
        out[raw == v] = i
    return out
