"""Data: raw readers, the slice cache, synthetic phantoms, splits and samplers."""

from .readers import DataError, DatasetSpec, CaseRecord, Volume, load_case, READERS, SPECS

__all__ = ["DataError", "DatasetSpec", "CaseRecord", "Volume", "load_case", "READERS", "SPECS"]
