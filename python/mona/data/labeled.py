"""Which training slices are labeled: the one place training asks.

``labeled_split(cache, labeled_patients=, labeled_ratio=, labeled_list=)`` returns the labeled and
unlabeled slices of the cache's train split (at most one of the three may be given):

- ``labeled_list=PATH``: a user file, one name per line (blank lines and ``#`` comments ignored):
  a patient id (all its slices), a case id, or ``CASE_slice_K`` (slice K of that case; LiTS
  ``caseNNNN`` aliases and a ``.h5`` suffix accepted). Every name must be a train patient / case /
  slice of the cache, else a DataError naming the name and the file.
- ``labeled_ratio``: on LiTS / MMWHS, the MONA authors' list for that ratio when the cache has one
  (0.01 / 0.05 / 0.1 -> ``train_1_`` / ``train_5_`` / ``train_10_.list``, restricted at prepare
  time to the volumes present; MMWHS 0.01 is 18 slices of ct_train_1018); otherwise (ACDC, other
  ratios, a cache without the lists) the first ``max(1, floor(ratio * n))`` whole train patients
  in split order (ACDC 1/5/10 % = 1/3/7 patients).
- ``labeled_patients=n``: the first n whole train patients in split order.
- none: the cache's default labeled list (``mona prepare --splits DIR`` with a ``labeled.list``),
  else a DataError.

Unlabeled = every other slice of the train split (slice level: the remaining slices of a partially
labeled case are unlabeled).
"""

from __future__ import annotations

from dataclasses import dataclass

from .dataset import SliceCache, SliceRef
from .readers import DataError
from .splits import (
    LABELED_LIST_FILES,
    LIST_DATASETS,
    labeled_unlabeled,
    ratio_key,
    read_name_file,
    resolve_labeled_names,
)


@dataclass
class LabeledSplit:
    """labeled / unlabeled: slices of the train split; labeled_patients: patients with any labeled
    slice (for logs and checkpoints); description: one line for the console; source: what chose the
    labeled slices (``"list:PATH"``, ``"mona:train_5_"``, ``"default:PATH"``, ``"first_patients"``)."""

    labeled: list[SliceRef]
    unlabeled: list[SliceRef]
    labeled_patients: list[str]
    description: str
    source: str = ""


def entries_to_slices(cache: SliceCache, entries: list) -> list[SliceRef]:
    """Manifest labeled entries (patient id, ``{"case": id}``, ``{"case": id, "slices": [...]}``) -> slices."""
    out: list[SliceRef] = []
    for e in entries:
        if isinstance(e, str):
            out += cache.slice_refs(cache.cases_of_patients([e]))
            continue
        cid = e.get("case") if isinstance(e, dict) else None
        if cid not in cache.case_index:
            raise DataError(f"{cache.root}: labeled entry {e!r} names no case of the cache (re-run `mona prepare`)")
        ci = cache.case_index[cid]
        n = cache.cases[ci]["n_slices"]
        slices = e.get("slices")
        if slices is None:
            out += cache.slice_refs([ci])
            continue
        bad = [k for k in slices if not 0 <= int(k) < n]
        if bad:
            raise DataError(f"{cache.root}: labeled entry {e!r}: slices {bad} out of range (case has {n})")
        out += [SliceRef(ci, int(k)) for k in slices]
    return out


def _split(cache: SliceCache, labeled: list[SliceRef], what: str, source: str) -> LabeledSplit:
    train_refs = cache.slice_refs(cache.cases_of_patients(cache.splits["train"]))
    train_set = set(train_refs)
    seen: set[SliceRef] = set()
    lab = []
    for r in labeled:
        if r not in train_set:
            pid = cache.cases[r.case_index]["patient_id"]
            raise DataError(f"{what}: patient {pid!r} is not in the train split of {cache.root}")
        if r not in seen:
            seen.add(r)
            lab.append(r)
    unl = [r for r in train_refs if r not in seen]
    lab_p = list(dict.fromkeys(cache.cases[r.case_index]["patient_id"] for r in lab))
    unl_p = list(dict.fromkeys(cache.cases[r.case_index]["patient_id"] for r in unl))
    n_whole = len(set(lab_p) - set(unl_p))
    kind = "whole" if n_whole == len(lab_p) else f"{n_whole} whole, {len(lab_p) - n_whole} partly"
    desc = (
        f"{what}: {len(lab)} labeled slices of {len(lab_p)} patient(s) ({kind}), {len(unl)} unlabeled slices "
        f"of {len(unl_p)} patient(s)"
    )
    return LabeledSplit(lab, unl, lab_p, desc, source)


def labeled_split(
    cache: SliceCache,
    *,
    labeled_patients: int | None = None,
    labeled_ratio: float | None = None,
    labeled_list: str | None = None,
) -> LabeledSplit:
    """The labeled / unlabeled slices of ``cache``'s train split (rules in the module docstring)."""
    train_patients = cache.splits["train"]
    if not train_patients:
        raise DataError(f"{cache.root}: the train split is empty")
    given = [
        k
        for k, v in (
            ("data.labeled_patients", labeled_patients),
            ("data.labeled_ratio", labeled_ratio),
            ("data.labeled_list", labeled_list),
        )
        if v is not None
    ]
    if len(given) > 1:
        raise DataError(
            f"give at most one of data.labeled_patients, data.labeled_ratio, data.labeled_list (got {', '.join(given)})"
        )
    man = cache.manifest
    dataset = man.get("dataset", "")
    if labeled_list is not None:
        names = read_name_file(labeled_list)
        if not names:
            raise DataError(f"{labeled_list}: the labeled list names no patient or slice")
        entries, _ = resolve_labeled_names(names, cache.cases, train_patients, dataset, str(labeled_list))
        return _split(cache, entries_to_slices(cache, entries), f"labeled list {labeled_list}", f"list:{labeled_list}")
    if labeled_ratio is not None:
        if not 0 < labeled_ratio <= 1:
            raise DataError(f"data.labeled_ratio must be in (0, 1], got {labeled_ratio}")
        lists = man.get("labeled_lists") or {}
        key = ratio_key(labeled_ratio, lists)
        if key is not None:
            fname = LABELED_LIST_FILES.get(key, key)
            what = f"the MONA authors' {dataset} list {fname}.list (labeled_ratio {key})"
            absent = (man.get("labeled_lists_absent") or {}).get(key)
            if absent:
                what += f", {len(absent)} listed name(s) not in this cache"
            return _split(cache, entries_to_slices(cache, lists[key]), what, f"mona:{fname}")
        lab_p, _ = labeled_unlabeled(train_patients, labeled_ratio=labeled_ratio)
        what = f"labeled_ratio {labeled_ratio}: the first {len(lab_p)} whole train patient(s)"
        if dataset in LIST_DATASETS:
            what += " (no MONA authors' list for this ratio on this cache)"
        return _split(cache, cache.slice_refs(cache.cases_of_patients(lab_p)), what, "first_patients")
    if labeled_patients is not None:
        try:
            lab_p, _ = labeled_unlabeled(train_patients, labeled_patients=labeled_patients)
        except ValueError as err:
            raise DataError(f"data.labeled_patients: {err}") from err
        return _split(
            cache,
            cache.slice_refs(cache.cases_of_patients(lab_p)),
            f"labeled_patients {labeled_patients}: the first {len(lab_p)} train patient(s)",
            "first_patients",
        )
    default = man.get("default_labeled")
    if default:
        return _split(
            cache,
            entries_to_slices(cache, default["entries"]),
            f"the cache's default labeled list {default['source']}",
            f"default:{default['source']}",
        )
    raise DataError("set data.labeled_patients, data.labeled_ratio or data.labeled_list")
