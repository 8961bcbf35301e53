"""Python side of each op: a typed wrapper, the autograd formula and the fake kernel.

One module per op, named like the op; its C++ lives in ``csrc/<op>/``.
"""

from .class_mean import class_mean
from .contrast import class_pools, contrast_infonce, contrast_loss, reco_loss, sample_negatives

__all__ = ["class_mean", "class_pools", "contrast_infonce", "contrast_loss", "reco_loss", "sample_negatives"]
