"""Synthetic cardiac-MR-like phantoms written in the raw ACDC layout.

Per patient: ``patientXXX/patientXXX_frame01.nii.gz`` (ED) and ``patientXXX_frameYY.nii.gz``
(ES) with ``_gt`` label files and an ``Info.cfg``, spacing in the NIfTI header. Each frame is a
short stack of slices with background tissue, a left-ventricle blood pool (class 3), a
myocardium ring (class 2) and a right-ventricle crescent (class 1); sizes, positions, shapes,
intensities, noise, a smooth multiplicative bias field and the slice count vary per patient and
shrink from base to apex, so the class frequencies are long-tailed like ACDC (background >> LV,
Myo > RV). The output goes through the same reader as real ACDC (:func:`mona.data.readers.read_acdc`).

With ``SynthConfig(tail=True)`` each patient also gets a long-tail class 4 ("PM"): one to three
small dark papillary-muscle-like blobs carved out of the LV blood pool next to the myocardium, in
the basal/mid slices only, covering 1-2 % of the slice's foreground pixels, with a contrast against
the blood pool drawn per patient (from about myocardium-dark to faint). Its parameters come from a
second per-patient stream, so every other draw is unchanged: the tail phantoms of a seed equal the
plain ones except that LV loses the PM pixels (and the image changes only in and around them).
Prepare tail phantoms as dataset ``phantom`` (classes background, RV, Myo, LV, PM).

Patient ids are taken from the shipped ACDC split lists in order (train, then val, then test),
so the shipped splits apply to the phantoms unchanged. Deterministic for a seed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import UsageError
from .splits import acdc_patients


@dataclass(frozen=True)
class SynthConfig:
    """How many phantoms and how big. ``size``: in-plane range (pixels) drawn per patient.

    ``tail``: add the long-tail class 4 ("PM", papillary-muscle-like blobs inside the LV; see the
    module docstring). ``tail=False`` writes exactly what the generator wrote before the option existed.
    """

    n_train: int = 8
    n_val: int = 2
    n_test: int = 4
    seed: int = 0
    size_min: int = 112
    size_max: int = 144
    slices_min: int = 5
    slices_max: int = 9
    tail: bool = False


#: label value of the long-tail class of ``SynthConfig(tail=True)``
PM_LABEL = 4
#: its share of a slice's foreground pixels (RV + Myo + LV + PM), where present
PM_FRACTION = (0.01, 0.02)
_TAIL_STREAM = 1  # the tail's per-patient stream: default_rng([seed, patient number, _TAIL_STREAM])


def _ellipse(xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, a: float, b: float, theta: float) -> np.ndarray:
    """Boolean mask of a rotated ellipse; xx, yy: ``[H, W]`` pixel coordinates."""
    c, s = np.cos(theta), np.sin(theta)
    u = (xx - cx) * c + (yy - cy) * s
    v = -(xx - cx) * s + (yy - cy) * c
    return (u / max(a, 1e-3)) ** 2 + (v / max(b, 1e-3)) ** 2 <= 1.0


def _tail_params(rng: np.random.Generator) -> dict:
    """Per-patient parameters of the PM blobs (from the patient's tail stream)."""
    n = int(rng.integers(1, 4))
    a0 = rng.uniform(0, 2 * np.pi)
    steps = rng.uniform(1.7, 2.6, n)
    steps[0] = 0.0
    return {
        "n": n,
        "angles": a0 + np.cumsum(steps),  # around the LV centre, in the LV ellipse's frame
        "depth": rng.uniform(0.78, 0.95, n),  # blob centre: this fraction of the way to the endocardium
        "weight": rng.uniform(0.7, 1.3, n),  # relative blob sizes
        "ecc": rng.uniform(0.5, 0.9, n),  # short / long axis; the long axis points at the LV centre
        "fraction": rng.uniform(*PM_FRACTION),
        "extent": rng.uniform(0.45, 0.75),  # present in slices with t = z / (Z - 1) <= extent
        # 1: as dark as the myocardium (clearly visible) ... 0.1: 90 % of the blood-pool intensity (faint)
        "contrast": rng.uniform(0.1, 1.0),
    }


def _pm_mask(
    rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, lv: np.ndarray, n_fg: int, geom: tuple, tp: dict
) -> np.ndarray:
    """The PM pixels of one slice: the k LV pixels nearest (in each blob's elliptical metric) to the
    blob centres, k = ``round(fraction * n_fg)`` kept within :data:`PM_FRACTION` of the slice's
    foreground ``n_fg`` and at most a third of the LV; ``geom`` = LV ``(cx, cy, a, b, theta)``."""
    cx, cy, a, b, theta = geom
    lo, hi = int(np.ceil(PM_FRACTION[0] * n_fg)), int(np.floor(PM_FRACTION[1] * n_fg))
    k = min(max(int(round(tp["fraction"] * n_fg)), lo), hi, int(lv.sum()) // 3)
    if k <= 0:
        return np.zeros_like(lv)
    jitter = rng.normal(0, 0.12, tp["n"])  # the blobs move a little from slice to slice
    c, s = np.cos(theta), np.sin(theta)
    dist = np.full(lv.shape, np.inf)
    for j in range(tp["n"]):
        phi = tp["angles"][j] + jitter[j]
        u, v = tp["depth"][j] * a * np.cos(phi), tp["depth"][j] * b * np.sin(phi)
        bx, by = cx + u * c - v * s, cy + u * s + v * c
        rad = np.arctan2(by - cy, bx - cx)  # long axis along the radius
        cr, sr = np.cos(rad), np.sin(rad)
        du = (xx - bx) * cr + (yy - by) * sr
        dv = -(xx - bx) * sr + (yy - by) * cr
        d = np.sqrt(du**2 + (dv / tp["ecc"][j]) ** 2) / tp["weight"][j]
        dist = np.minimum(dist, d)
    flat = np.flatnonzero(lv)
    chosen = flat[np.argsort(dist.ravel()[flat], kind="stable")[:k]]
    pm = np.zeros(lv.size, bool)
    pm[chosen] = True
    return pm.reshape(lv.shape)


def phantom_frame(
    rng: np.random.Generator,
    shape: tuple[int, int],
    n_slices: int,
    params: dict,
    contraction: float,
    *,
    tail_rng: np.random.Generator | None = None,
    tail_params: dict | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One frame: image float32 ``[H, W, Z]`` (arbitrary MR-like units) and label uint8 ``[H, W, Z]``.

    With ``tail_params`` (:func:`_tail_params`) and ``tail_rng`` the basal/mid slices get the PM
    blobs (label :data:`PM_LABEL`); ``rng`` is used exactly as without them.
    """
    h, w = shape
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    img = np.zeros((h, w, n_slices), np.float32)
    lab = np.zeros((h, w, n_slices), np.uint8)
    p = params
    for z in range(n_slices):
        t = z / max(n_slices - 1, 1)  # 0 = base, 1 = apex
        shrink = 1.0 - 0.6 * t**1.5
        cx = p["cx"] + p["drift_x"] * t + rng.normal(0, 0.5)
        cy = p["cy"] + p["drift_y"] * t + rng.normal(0, 0.5)
        r_lv = p["r_lv"] * shrink * contraction
        thick = p["thick"] * (1.0 + 0.25 * (1 - contraction)) * (0.8 + 0.2 * shrink)
        lv = _ellipse(xx, yy, cx, cy, r_lv, r_lv * p["ecc"], p["theta"])
        epi = _ellipse(xx, yy, cx, cy, r_lv + thick, (r_lv * p["ecc"]) + thick, p["theta"])
        myo = epi & ~lv
        rv = np.zeros_like(lv)
        if t <= p["rv_extent"]:
            ang = p["rv_angle"]
            off = r_lv + thick * 0.6
            rcx, rcy = cx + np.cos(ang) * off, cy + np.sin(ang) * off
            ra = p["r_rv"] * shrink * (0.85 + 0.15 * contraction)
            rv = _ellipse(xx, yy, rcx, rcy, ra, ra * p["rv_ecc"], ang) & ~ndimage.binary_dilation(epi, iterations=1)
        # background tissue: a body ellipse with smooth random texture
        body = _ellipse(xx, yy, w / 2 + p["body_dx"], h / 2 + p["body_dy"], 0.46 * w, 0.40 * h, p["body_theta"])
        texture = ndimage.gaussian_filter(rng.normal(0, 1, (h, w)), sigma=p["texture_sigma"])
        texture /= texture.std() + 1e-6
        sl = np.where(body, p["i_tissue"] + p["texture_amp"] * texture, p["i_air"])
        sl = np.where(myo, p["i_myo"], sl)
        sl = np.where(lv, p["i_blood"], sl)
        sl = np.where(rv, p["i_blood"] * p["rv_rel"], sl)
        pm = None
        if tail_params is not None and t <= tail_params["extent"]:
            assert tail_rng is not None
            n_fg = int((lv | myo | rv).sum())
            pm = _pm_mask(tail_rng, xx, yy, lv, n_fg, (cx, cy, r_lv, r_lv * p["ecc"], p["theta"]), tail_params)
            i_pm = p["i_blood"] - tail_params["contrast"] * (p["i_blood"] - p["i_myo"])
            sl = np.where(pm, i_pm, sl)
        sl = ndimage.gaussian_filter(sl, 0.7)  # partial-volume blur at the edges
        img[:, :, z] = sl
        lab[:, :, z] = np.where(lv, 3, np.where(myo, 2, np.where(rv, 1, 0)))
        if pm is not None:
            lab[:, :, z][pm] = PM_LABEL
    # smooth multiplicative bias field over the whole stack + Rician-like noise
    bias = np.exp(
        p["bias_amp"]
        * (
            p["bias_a"] * (xx / w - 0.5)
            + p["bias_b"] * (yy / h - 0.5)
            + p["bias_c"] * ((xx / w - 0.5) ** 2 + (yy / h - 0.5) ** 2)
        )
    )
    img = img * bias[..., None].astype(np.float32)
    n1 = rng.normal(0, p["noise"], img.shape)
    n2 = rng.normal(0, p["noise"], img.shape)
    img = np.sqrt((img + n1) ** 2 + n2**2).astype(np.float32)
    return img, lab


def _patient_params(rng: np.random.Generator, h: int, w: int) -> dict:
    side = min(h, w)
    return {
        "cx": w / 2 + rng.uniform(-0.1, 0.1) * w,
        "cy": h / 2 + rng.uniform(-0.1, 0.1) * h,
        "drift_x": rng.uniform(-4, 4),
        "drift_y": rng.uniform(-4, 4),
        "r_lv": rng.uniform(0.09, 0.13) * side,
        "ecc": rng.uniform(0.8, 1.2),
        "theta": rng.uniform(0, np.pi),
        "thick": rng.uniform(0.045, 0.065) * side,
        "rv_angle": np.pi + rng.uniform(-0.6, 0.6),
        "r_rv": rng.uniform(0.14, 0.19) * side,
        "rv_ecc": rng.uniform(0.5, 0.75),
        "rv_extent": rng.uniform(0.55, 0.85),
        "rv_rel": rng.uniform(0.8, 1.0),
        "body_dx": rng.uniform(-3, 3),
        "body_dy": rng.uniform(-3, 3),
        "body_theta": rng.uniform(-0.3, 0.3),
        "texture_sigma": rng.uniform(2.0, 5.0),
        "texture_amp": rng.uniform(0.04, 0.10),
        "i_tissue": rng.uniform(0.3, 0.45),
        "i_air": rng.uniform(0.0, 0.04),
        "i_myo": rng.uniform(0.15, 0.25),
        "i_blood": rng.uniform(0.75, 0.95),
        "noise": rng.uniform(0.02, 0.06),
        "bias_amp": rng.uniform(0.2, 0.6),
        "bias_a": rng.normal(),
        "bias_b": rng.normal(),
        "bias_c": rng.normal(),
    }


def _save_nifti(arr: np.ndarray, spacing: tuple[float, float, float], path: Path) -> None:
    import nibabel as nib

    affine = np.diag([spacing[0], spacing[1], spacing[2], 1.0])
    img = nib.Nifti1Image(arr, affine)
    img.header.set_zooms(spacing)
    nib.save(img, str(path))


def synth_patient_ids(n_train: int, n_val: int, n_test: int) -> list[str]:
    """Patient ids for the phantoms: the first n of each shipped ACDC split, in list order."""
    lists = acdc_patients()
    for name, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        if n < 0 or n > len(lists[name]):
            raise UsageError(f"synth: n_{name} must be in 0..{len(lists[name])}, got {n}")
    return lists["train"][:n_train] + lists["val"][:n_val] + lists["test"][:n_test]


def write_phantoms(out_dir: str | Path, cfg: SynthConfig = SynthConfig(), *, progress: bool = True) -> list[str]:
    """Write ``cfg.n_train + n_val + n_test`` phantom patients to ``out_dir`` in the ACDC layout.

    Each patient directory is written to a temporary directory first and moved into place, so an
    interrupted run never leaves a half-written patient. Existing patient directories are
    replaced. Returns the patient ids written.
    """
    from tqdm import tqdm

    if cfg.size_min < 32 or cfg.size_max < cfg.size_min:
        raise UsageError(f"synth: need 32 <= size_min <= size_max, got {cfg.size_min}, {cfg.size_max}")
    if cfg.slices_min < 1 or cfg.slices_max < cfg.slices_min:
        raise UsageError(f"synth: need 1 <= slices_min <= slices_max, got {cfg.slices_min}, {cfg.slices_max}")
    ids = synth_patient_ids(cfg.n_train, cfg.n_val, cfg.n_test)  # checks the counts before writing anything
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for pid in tqdm(ids, desc="synth phantoms", disable=not progress, unit="patient"):
        num = int(pid[len("patient") :])
        rng = np.random.default_rng([cfg.seed, num])  # per patient: independent of how many are written
        h = int(rng.integers(cfg.size_min, cfg.size_max + 1))
        w = int(rng.integers(cfg.size_min, cfg.size_max + 1))
        n_slices = int(rng.integers(cfg.slices_min, cfg.slices_max + 1))
        pix = float(np.round(rng.uniform(1.2, 1.8), 3))
        spacing = (pix, pix, float(np.round(rng.uniform(6.0, 10.0), 2)))
        params = _patient_params(rng, h, w)
        tail_rng = np.random.default_rng([cfg.seed, num, _TAIL_STREAM]) if cfg.tail else None
        tail_params = _tail_params(tail_rng) if tail_rng is not None else None
        es_frame = int(rng.integers(8, 15))
        scale = rng.uniform(600, 1400)
        tmp = Path(tempfile.mkdtemp(prefix=f".{pid}.", dir=out))
        try:
            for frame, contraction in ((1, 1.0), (es_frame, rng.uniform(0.6, 0.8))):
                img, lab = phantom_frame(
                    rng, (h, w), n_slices, params, contraction, tail_rng=tail_rng, tail_params=tail_params
                )
                # NIfTI voxel order [X, Y, Z]: transpose the [H, W, Z] stack
                _save_nifti(
                    np.round(img.transpose(1, 0, 2) * scale).astype(np.int16),
                    spacing,
                    tmp / f"{pid}_frame{frame:02d}.nii.gz",
                )
                _save_nifti(lab.transpose(1, 0, 2).astype(np.uint8), spacing, tmp / f"{pid}_frame{frame:02d}_gt.nii.gz")
            (tmp / "Info.cfg").write_text(
                f"ED: 1\nES: {es_frame}\nGroup: SYNTH\nHeight: 170.0\nNbFrame: 30\nWeight: 70.0\n"
            )
            dest = out / pid
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(tmp, dest)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return ids
