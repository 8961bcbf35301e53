"""Patient splits and the shipped split lists.

Shipped lists (package data ``mona/data/splits/<dataset>/*.list``, see the README.md there):

- ACDC: the SSL4MIS lists: 70 train / 10 val / 20 test patients. The labeled subset is the first n
  patients in order of first appearance in ``train_slices.list`` (whole patients: 1 % -> 1,
  5 % -> 3, 10 % -> 7 of 70).
- LiTS / MMWHS: the MONA authors' lists (charlesyou999648/MONA, ``dataset_split/``, MIT licence):
  ``train_all.list`` -> train, ``test.list`` -> test, no val; ``train_1_`` / ``train_5_`` /
  ``train_10_.list`` are the labeled subsets of ``labeled_ratio`` 0.01 / 0.05 / 0.1.

Name mapping of the authors' lists onto the ids of :mod:`mona.data.readers` (a trailing ``.h5`` is
dropped everywhere):

- LiTS ``caseNNNN`` -> ``volume-N`` with **N = NNNN - 1** (the authors number the 131 training
  volumes 1..131; the raw ``volume-N.nii`` are numbered 0..130; the authors did not publish their
  mapping, this is the one used here). The alias is also accepted in user lists.
- MMWHS ``ct_train_10NN`` is the case/patient id of ``ct_train_10NN_image.nii.gz`` unchanged. The
  lists name CT volumes only: MR volumes (``mr_train_10NN``) get the seeded random split.
- ``NAME_slice_K`` (MMWHS 1 %: ``ct_train_1018_slice_K``) is slice K of case NAME: K indexes the
  NIfTI's third (axial) axis, which is the slice index z of the cache (``mona prepare`` keeps all
  slices, in order).

Folders (and LiTS / MMWHS volumes outside the lists' scope): a seeded random split by patient.
Any dataset: ``mona prepare --splits DIR`` with the user's ``train.list`` / ``test.list`` /
optional ``val.list`` / ``labeled.list`` (see :func:`plan_splits`).

Labeled-list entries, as stored in the manifest (``labeled_lists``, ``default_labeled``) and used by
:func:`mona.data.labeled.labeled_split`: a string = a whole patient (all its cases);
``{"case": CASE}`` = one whole case; ``{"case": CASE, "slices": [k, ...]}`` = those slices of a case.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from .readers import DataError

SPLIT_NAMES = ("train", "val", "test")
LIST_DATASETS = ("lits", "mmwhs")
#: datasets split by the shipped ACDC (SSL4MIS) lists: ACDC and the phantoms of ``mona synth --tail``
ACDC_LIST_DATASETS = ("acdc", "phantom")
#: labeled_ratio (manifest key) -> the authors' list file (without ``.list``)
LABELED_LIST_FILES = {"0.01": "train_1_", "0.05": "train_5_", "0.1": "train_10_"}
USER_SPLIT_FILES = ("train.list", "val.list", "test.list")
_SLICE = re.compile(r"(.+)_slice_(\d+)")
_LITS_CASE = re.compile(r"case(\d{4})")


def _read_list(name: str, dataset: str = "acdc") -> list[str]:
    text = resources.files("mona").joinpath(f"data/splits/{dataset}/{name}.list").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def shipped_list_path(dataset: str, name: str) -> str:
    """Where a shipped list lives (for messages), e.g. ``mona/data/splits/lits/test.list``."""
    return f"mona/data/splits/{dataset}/{name}.list"


def _patients_in_order(case_names: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for c in case_names:
        seen.setdefault(c.split("_")[0], None)
    return list(seen)


@lru_cache(maxsize=1)
def _acdc_patients_cached() -> tuple[tuple[str, ...], ...]:
    return (
        tuple(_patients_in_order(_read_list("train_slices"))),
        tuple(_patients_in_order(_read_list("val"))),
        tuple(_patients_in_order(_read_list("test"))),
    )


def acdc_patients() -> dict[str, list[str]]:
    """Shipped ACDC patients per split; ``train`` in labeled order (first appearance in train_slices.list)."""
    train, val, test = _acdc_patients_cached()
    return {"train": list(train), "val": list(val), "test": list(test)}


def acdc_case_lists() -> dict[str, list[str]]:
    """Shipped ACDC case (volume) names per split, e.g. ``patient099_frame01``."""
    return {"train": _read_list("train"), "val": _read_list("val"), "test": _read_list("test")}


# ----------------------------------------------------------------------------- names


def lits_case_to_volume(name: str) -> str:
    """The authors' LiTS ``caseNNNN`` (1..131) -> the reader's ``volume-N`` (N = NNNN - 1)."""
    m = _LITS_CASE.fullmatch(name)
    if not m or int(m.group(1)) < 1:
        raise ValueError(f"not a LiTS list name caseNNNN (NNNN >= 1): {name!r}")
    return f"volume-{int(m.group(1)) - 1}"


def canonical_name(dataset: str, name: str) -> str:
    """A list name as a cache id: drop a trailing ``.h5``; LiTS ``caseNNNN[_slice_K]`` -> ``volume-N[_slice_K]``."""
    name = name.strip()
    if name.endswith(".h5"):
        name = name[:-3]
    if dataset == "lits":
        m = _SLICE.fullmatch(name)
        base, tail = (m.group(1), f"_slice_{m.group(2)}") if m else (name, "")
        if _LITS_CASE.fullmatch(base) and int(base[4:]) >= 1:
            return lits_case_to_volume(base) + tail
    return name


@lru_cache(maxsize=4)
def _mona_lists_cached(dataset: str):
    train = tuple(canonical_name(dataset, n) for n in _read_list("train_all", dataset))
    test = tuple(canonical_name(dataset, n) for n in _read_list("test", dataset))
    labeled = tuple(
        (k, tuple(canonical_name(dataset, n) for n in _read_list(f, dataset))) for k, f in LABELED_LIST_FILES.items()
    )
    return train, test, labeled


def mona_lists(dataset: str) -> dict:
    """The MONA authors' lists of ``lits`` / ``mmwhs`` as cache ids, in file order.

    ``{"train": [...], "test": [...], "labeled": {"0.01": [...], "0.05": [...], "0.1": [...]}}``;
    labeled names are patient ids or ``CASE_slice_K``.
    """
    if dataset not in LIST_DATASETS:
        raise ValueError(f"no MONA split lists for {dataset!r} (only {', '.join(LIST_DATASETS)})")
    train, test, labeled = _mona_lists_cached(dataset)
    return {"train": list(train), "test": list(test), "labeled": {k: list(v) for k, v in labeled}}


def read_name_file(path: str | Path) -> list[tuple[int, str]]:
    """(line number, name) of a user list: one name per line; blank lines and ``#`` comments ignored."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: list file does not exist")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read the list file ({err})") from err
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        name = line.split("#", 1)[0].strip()
        if name:
            out.append((i, name))
    return out


# ----------------------------------------------------------------------------- labeled counts


def labeled_patient_count(ratio: float, n_train_patients: int) -> int:
    """Whole labeled patients for a ratio: ``max(1, floor(ratio * n))`` (70 patients: 1%->1, 5%->3, 10%->7)."""
    if not 0 < ratio <= 1:
        raise ValueError(f"labeled_ratio must be in (0, 1], got {ratio}")
    return min(n_train_patients, max(1, math.floor(ratio * n_train_patients + 1e-9)))


def ratio_key(ratio: float, keys) -> str | None:
    """The key of ``keys`` (``"0.01"`` ...) equal to ``ratio``, or None."""
    for k in keys:
        if math.isclose(float(k), float(ratio), rel_tol=1e-9, abs_tol=1e-12):
            return k
    return None


def labeled_unlabeled(
    train_patients: list[str], *, labeled_patients: int | None = None, labeled_ratio: float | None = None
) -> tuple[list[str], list[str]]:
    """Split the (ordered) train patients into labeled (the first n) and unlabeled (the rest)."""
    if (labeled_patients is None) == (labeled_ratio is None):
        raise ValueError("give exactly one of labeled_patients or labeled_ratio")
    n = len(train_patients)
    if labeled_ratio is not None:
        k = labeled_patient_count(labeled_ratio, n)
    else:
        k = int(labeled_patients)  # type: ignore[arg-type]
        if not 1 <= k <= n:
            raise ValueError(f"labeled_patients must be in 1..{n} (train patients available), got {k}")
    return train_patients[:k], train_patients[k:]


# ----------------------------------------------------------------------------- splits


def split_patients(
    dataset: str, patients: list[str], *, seed: int = 0, n_val: int | None = None, n_test: int | None = None
) -> dict[str, list[str]]:
    """Assign the available patients to train/val/test (the lists-free part of :func:`plan_splits`).

    ``acdc`` (and ``phantom``): the shipped lists restricted to the available patients (train kept in
    labeled order); a patient that is in no list is an error. Other datasets: seeded random
    permutation; defaults LiTS 100/0/31 of 131 (scaled by 31/131 when fewer), MMWHS 15/0/5 of 20
    (scaled by 1/4), folder 20 % test.
    """
    if dataset in ACDC_LIST_DATASETS:
        ship = acdc_patients()
        avail = set(patients)
        known = set(ship["train"]) | set(ship["val"]) | set(ship["test"])
        unknown = sorted(avail - known)
        if unknown:
            raise DataError(
                f"{dataset}: patients {unknown[:5]} are in none of the shipped split lists "
                f"(mona/data/splits/acdc); pass `--splits DIR` with your own train.list/test.list"
            )
        return {k: [p for p in ship[k] if p in avail] for k in SPLIT_NAMES}
    n = len(patients)
    if n_test is None:
        frac = {"lits": 31 / 131, "mmwhs": 5 / 20}.get(dataset, 0.2)
        n_test = max(1, round(n * frac)) if n > 1 else 0
    n_val = n_val or 0
    if n_test + n_val >= n:
        raise ValueError(f"{dataset}: cannot hold out {n_test} test + {n_val} val of {n} patients")
    order = np.random.default_rng(seed).permutation(sorted(patients)).tolist()
    return {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}


@dataclass
class SplitPlan:
    """What ``mona prepare`` stores about splits.

    splits: patients per split; source: one line saying where the split comes from;
    labeled_names: ratio key -> names (patient ids or ``CASE_slice_K``) of the authors' labeled list
    restricted to the present patients (non-empty lists only); labeled_absent: ratio key -> listed
    names not present; default_labeled: (file, [(line, name)]) of ``--splits DIR/labeled.list``;
    notes: lines for the prepare summary.
    """

    splits: dict[str, list[str]]
    source: str
    labeled_names: dict[str, list[str]] = field(default_factory=dict)
    labeled_absent: dict[str, list[str]] = field(default_factory=dict)
    default_labeled: tuple[str, list[tuple[int, str]]] | None = None
    notes: list[str] = field(default_factory=list)


def _list_patient(name: str) -> str:
    """The patient/case a list name refers to (``ct_train_1018_slice_7`` -> ``ct_train_1018``)."""
    m = _SLICE.fullmatch(name)
    return m.group(1) if m else name


def _few(names, k: int = 5) -> str:
    names = list(names)
    return ", ".join(names[:k]) + (f", ... ({len(names)} in all)" if len(names) > k else "")


def plan_splits(
    dataset: str,
    patients: list[str],
    *,
    seed: int = 0,
    splits_dir: str | Path | None = None,
    case_patient: dict[str, str] | None = None,
) -> SplitPlan:
    """The train/val/test split of the present ``patients`` (and labeled lists) for ``mona prepare``.

    - ``splits_dir`` (any dataset): the user's ``train.list`` + ``test.list`` (+ optional ``val.list``,
      ``labeled.list``). Names are patient ids (or case ids, ``case_patient`` maps them to their
      patient; LiTS ``caseNNNN`` aliases accepted); a name not present, a patient in two lists, or a
      present patient in no list is a DataError naming it and the file.
    - ``acdc``, ``phantom``: the shipped SSL4MIS lists, restricted to the present patients.
    - ``lits``: the authors' lists restricted to the present volumes (val empty); a present volume
      in neither ``train_all.list`` nor ``test.list`` is a DataError (use ``--splits DIR``). If no
      present volume is listed at all: the seeded random split.
    - ``mmwhs``: the same for the CT volumes (``ct_*``); other (MR) volumes get the seeded random
      split, merged in.
    - ``folder``: the seeded random split.
    """
    if splits_dir is not None:
        return _plan_user(dataset, patients, Path(splits_dir), case_patient or {})
    if dataset in ACDC_LIST_DATASETS:
        return SplitPlan(split_patients(dataset, patients), "the shipped SSL4MIS lists (mona/data/splits/acdc)")
    if dataset not in LIST_DATASETS:
        return SplitPlan(split_patients(dataset, patients, seed=seed), f"seeded random split by patient (seed {seed})")
    ml = mona_lists(dataset)
    listed = set(ml["train"]) | set(ml["test"])
    in_scope = list(patients) if dataset == "lits" else [p for p in patients if p.startswith("ct_")]
    rest = [p for p in patients if p not in set(in_scope)]
    where = f"mona/data/splits/{dataset}"
    notes: list[str] = []
    if in_scope and not any(p in listed for p in in_scope):
        notes.append(
            f"none of the {len(in_scope)} volume(s) is named in the MONA authors' lists ({where}): "
            f"seeded random split (seed {seed})"
        )
        rest, in_scope = list(patients), []
    plan = SplitPlan({k: [] for k in SPLIT_NAMES}, "", notes=notes)
    sources = []
    if in_scope:
        unknown = [p for p in in_scope if p not in listed]
        if unknown:
            raise DataError(
                f"{dataset}: volume(s) {_few(unknown)} are in neither train_all.list nor test.list of the "
                f"MONA authors' lists ({where}); pass `--splits DIR` with your own train.list/test.list "
                f"(or remove those volumes from the raw directory)"
            )
        present = set(in_scope)
        plan.splits["train"] = [p for p in ml["train"] if p in present]
        plan.splits["test"] = [p for p in ml["test"] if p in present]
        n_all = len(ml["train"]) + len(ml["test"])
        sources.append(f"the MONA authors' lists ({where})")
        if len(present) < n_all:
            notes.append(
                f"{len(present)} of the {n_all} listed volumes are present: the lists are restricted to them "
                f"({len(plan.splits['train'])} of {len(ml['train'])} train, "
                f"{len(plan.splits['test'])} of {len(ml['test'])} test)"
            )
        for key, names in ml["labeled"].items():
            keep = [n for n in names if _list_patient(n) in present]
            absent = [n for n in names if n not in keep]
            if keep:
                plan.labeled_names[key] = keep
            if absent:
                plan.labeled_absent[key] = absent
                notes.append(
                    f"labeled list {LABELED_LIST_FILES[key]}.list (ratio {key}): "
                    + (
                        f"{len(keep)} of {len(names)} names present"
                        if keep
                        else "none of its volumes is present; that ratio will use whole patients"
                    )
                )
    if rest:
        r = split_patients(dataset, rest, seed=seed)
        for k in SPLIT_NAMES:
            plan.splits[k] += r[k]
        if dataset == "mmwhs" and any(not p.startswith("ct_") for p in rest):
            scope = f" for the {len(rest)} non-CT volume(s)" if in_scope else ""
            sources.append(f"seeded random split (seed {seed}){scope}")
            notes.append(
                f"the MONA authors' MMWHS lists name CT volumes only: the {len(rest)} other (MR) volume(s) "
                f"got a seeded random split (seed {seed})"
            )
        else:
            sources.append(f"seeded random split by patient (seed {seed})")
    plan.source = "; ".join(sources)
    return plan


def _plan_user(dataset: str, patients: list[str], d: Path, case_patient: dict[str, str]) -> SplitPlan:
    if not d.is_dir():
        raise DataError(
            f"--splits {d}: not a directory (it must hold train.list and test.list, optionally "
            f"val.list and labeled.list)"
        )
    for req in ("train.list", "test.list"):
        if not (d / req).is_file():
            raise DataError(
                f"--splits {d}: missing {req} (need train.list and test.list; val.list and labeled.list are optional)"
            )
    present = set(patients)
    splits: dict[str, list[str]] = {k: [] for k in SPLIT_NAMES}
    owner: dict[str, str] = {}
    for split in SPLIT_NAMES:
        f = d / f"{split}.list"
        if not f.is_file():
            continue
        for line, raw in read_name_file(f):
            name = canonical_name(dataset, raw)
            pid = name if name in present else case_patient.get(name)
            if pid is None:
                raise DataError(
                    f"{f}: line {line}: {raw!r} is not a patient of this {dataset} data "
                    f"(present patients: {_few(sorted(present), 3)})"
                )
            if pid in owner and owner[pid] != split:
                raise DataError(
                    f"{f}: line {line}: patient {pid!r} is also in {owner[pid]}.list; a patient belongs to one split"
                )
            if pid not in owner:
                owner[pid] = split
                splits[split].append(pid)
    if not splits["train"]:
        raise DataError(f"{d / 'train.list'}: names no patient; the train split must not be empty")
    missing = [p for p in patients if p not in owner]
    if missing:
        raise DataError(
            f"--splits {d}: present patient(s) {_few(missing)} are in none of train.list/val.list/"
            f"test.list; list every patient of the raw directory (or remove it from there)"
        )
    lab = d / "labeled.list"
    default = (str(lab.resolve()), read_name_file(lab)) if lab.is_file() else None
    return SplitPlan(splits, f"user lists ({d.resolve()})", default_labeled=default)


# ----------------------------------------------------------------------------- labeled entries


def resolve_labeled_names(
    names: list[tuple[int | None, str]],
    cases: list[dict],
    train_patients: list[str],
    dataset: str,
    source: str,
    *,
    strict: bool = True,
) -> tuple[list, list[tuple[str, str]]]:
    """Labeled-list names -> manifest entries (see the module docstring), validated against ``cases``.

    A name is a patient id, a case id or ``CASE_slice_K`` (``K`` < the case's slice count); the
    LiTS alias ``caseNNNN`` and a ``.h5`` suffix are accepted. Every name must belong to the train
    split. ``strict``: a bad name is a DataError naming it and ``source`` (with the line number);
    otherwise it is left out and reported in the returned problems ``(name, why)``. Returns (entries, problems);
    entries keep the order of first mention, one per patient / case, slices sorted.
    """
    by_case = {c["case_id"]: c for c in cases}
    patients = {c["patient_id"] for c in cases}
    train = set(train_patients)
    whole_patients: list[str] = []
    case_slices: dict[str, set[int] | None] = {}  # None = whole case
    order: list[tuple[str, str]] = []
    problems: list[tuple[str, str]] = []

    def bad(line, raw, why):
        where = f"{source}: line {line}" if line is not None else source
        if strict:
            raise DataError(f"{where}: {raw!r} {why}")
        problems.append((raw, why))

    for line, raw in names:
        name = canonical_name(dataset, raw)
        if name in patients:
            if name not in train:
                bad(line, raw, "is not in the train split of this cache (only train patients can be labeled)")
                continue
            if name not in whole_patients:
                whole_patients.append(name)
                order.append(("p", name))
            continue
        case, k = name, None
        if case not in by_case:
            m = _SLICE.fullmatch(name)
            if m and m.group(1) in by_case:
                case, k = m.group(1), int(m.group(2))
            elif m and m.group(1) in patients:
                pcases = [c for c in cases if c["patient_id"] == m.group(1)]
                if len(pcases) != 1:
                    bad(
                        line,
                        raw,
                        f"is ambiguous: patient {m.group(1)!r} has {len(pcases)} cases; name the case "
                        f"({pcases[0]['case_id']}_slice_K)",
                    )
                    continue
                case, k = pcases[0]["case_id"], int(m.group(2))
            else:
                bad(
                    line,
                    raw,
                    f"is not a patient, case or CASE_slice_K of this cache (e.g. {_few(sorted(patients), 3)})",
                )
                continue
        c = by_case[case]
        if c["patient_id"] not in train:
            bad(line, raw, "is not in the train split of this cache (only train patients can be labeled)")
            continue
        if k is not None and not 0 <= k < c["n_slices"]:
            n = c["n_slices"]
            bad(line, raw, f"slice {k} is out of range: case {case!r} has {n} slices (0..{n - 1})")
            continue
        if case not in case_slices:
            case_slices[case] = set()
            order.append(("c", case))
        if k is None:
            case_slices[case] = None
        elif case_slices[case] is not None:
            case_slices[case].add(k)  # type: ignore[union-attr]
    entries: list = []
    for kind, ident in order:
        if kind == "p":
            entries.append(ident)
        elif by_case[ident]["patient_id"] not in whole_patients:  # a whole patient covers its cases
            s = case_slices[ident]
            entries.append({"case": ident} if s is None else {"case": ident, "slices": sorted(s)})
    return entries, problems
