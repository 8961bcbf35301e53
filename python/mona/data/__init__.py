"""Data: raw readers, the slice cache, synthetic phantoms, splits and samplers."""

from .readers import READERS, SPECS, CaseRecord, DataError, DatasetSpec, Volume, load_case

__all__ = ["DataError", "DatasetSpec", "CaseRecord", "Volume", "load_case", "READERS", "SPECS"]
