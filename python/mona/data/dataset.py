"""Reading a prepared slice cache (see :mod:`mona.data.prepare`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .prepare import CACHE_VERSION, MANIFEST
from .readers import DataError


@dataclass(frozen=True)
class SliceRef:
    case_index: int
    z: int


class SliceCache:
    """A prepared cache opened read-only; volumes are memory-mapped on first use.

    ``cases``: the manifest's per-volume entries; ``slices``: a flat index of (case, z).
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        man = self.root / MANIFEST
        if not self.root.exists():
            raise DataError(
                f"{self.root}: the cache directory does not exist; create it with `mona prepare "
                f"DATASET RAW_DIR {self.root}` (phantoms: `mona synth RAW_DIR` first, then "
                f"`mona prepare acdc RAW_DIR {self.root}`), or point data.cache at an existing cache"
            )
        if not self.root.is_dir():
            raise DataError(f"{self.root}: not a directory (data.cache must be a directory written by `mona prepare`)")
        if not man.exists():
            raise DataError(
                f"{self.root}: not a prepared cache (no {MANIFEST}; run `mona prepare`, "
                f"or an earlier run was interrupted)"
            )
        try:
            self.manifest = json.loads(man.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(f"{man}: corrupt manifest ({err})") from err
        if not isinstance(self.manifest, dict):
            raise DataError(f"{man}: corrupt manifest (a JSON object expected)")
        if self.manifest.get("cache_version") != CACHE_VERSION:
            raise DataError(
                f"{man}: cache version {self.manifest.get('cache_version')} != {CACHE_VERSION}; re-run `mona prepare`"
            )
        try:
            self.cases: list[dict] = self.manifest["cases"]
            self.class_names: list[str] = self.manifest["class_names"]
            self.size: int = self.manifest["size"]
            self.manifest["splits"], self.manifest["normalisation"]
        except KeyError as err:
            raise DataError(f"{man}: corrupt manifest (no {err.args[0]!r} entry); re-run `mona prepare`") from None
        self.case_index = {c["case_id"]: i for i, c in enumerate(self.cases)}
        self._maps: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        # every volume file is opened (memory-mapped: headers and sizes only) now, so a missing or
        # truncated file is reported when a run starts, not when it first draws that volume hours later
        for i in range(len(self.cases)):
            self.arrays(i)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def splits(self) -> dict[str, list[str]]:
        return self.manifest["splits"]

    def arrays(self, case_index: int) -> tuple[np.ndarray, np.ndarray]:
        """Memory-mapped (image float32 ``[Z, S, S]``, label uint8 ``[Z, S, S]``) of one volume."""
        if case_index not in self._maps:
            cid = self.cases[case_index]["case_id"]
            paths = [self.root / "volumes" / f"{cid}.{kind}.npy" for kind in ("image", "label")]
            for p in paths:
                if not p.exists():
                    raise DataError(f"{p}: missing from the cache (re-run `mona prepare`)")
            arrs = []
            for p in paths:
                try:
                    arrs.append(np.load(p, mmap_mode="r"))
                except (ValueError, OSError, EOFError) as err:  # truncated / overwritten / not an .npy file
                    raise DataError(
                        f"{p}: unreadable cache volume ({type(err).__name__}: {err}); re-run `mona prepare`"
                    ) from err
            img, lab = arrs
            n = self.cases[case_index]["n_slices"]
            if img.shape != (n, self.size, self.size) or lab.shape != img.shape:
                raise DataError(f"{paths[0]}: shape {img.shape}/{lab.shape} does not match the manifest")
            self._maps[case_index] = (img, lab)
        return self._maps[case_index]

    def cases_of_patients(self, patients: list[str]) -> list[int]:
        """Case indices of these patients, in the order of ``patients`` then case id."""
        by_patient: dict[str, list[int]] = {}
        for i, c in enumerate(self.cases):
            by_patient.setdefault(c["patient_id"], []).append(i)
        missing = [p for p in patients if p not in by_patient]
        if missing:
            raise DataError(f"{self.root}: patients {missing[:5]} are not in the cache")
        return [i for p in patients for i in sorted(by_patient[p], key=lambda j: self.cases[j]["case_id"])]

    def slice_refs(self, case_indices: list[int]) -> list[SliceRef]:
        return [SliceRef(ci, z) for ci in case_indices for z in range(self.cases[ci]["n_slices"])]

    def load_batch(self, refs: list[SliceRef]) -> tuple[torch.Tensor, torch.Tensor]:
        """Images float32 ``[B, 1, S, S]`` and labels int64 ``[B, S, S]`` for these slices."""
        imgs = np.empty((len(refs), 1, self.size, self.size), np.float32)
        labs = np.empty((len(refs), self.size, self.size), np.int64)
        for k, r in enumerate(refs):
            img, lab = self.arrays(r.case_index)
            imgs[k, 0] = img[r.z]
            labs[k] = lab[r.z]
        return torch.from_numpy(imgs), torch.from_numpy(labs)
