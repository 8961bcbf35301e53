"""Python side of each op: a typed wrapper, the autograd formula and the fake kernel.

One module per op, named like the op; its C++ lives in ``csrc/<op>/``.
"""

from .bank import bank_push, queue_push
from .class_mean import class_mean
from .class_pools import class_pools
from .contrast_infonce import contrast_infonce
from .contrast_loss import contrast_loss, contrast_loss_at_queries, reco_loss
from .knn_loss import knn_loss
from .pixel_kl import pixel_kl
from .sample_negatives import sample_negatives
from .similarity_kl import similarity_kl

__all__ = [
    "class_mean",
    "class_pools",
    "contrast_infonce",
    "contrast_loss",
    "contrast_loss_at_queries",
    "reco_loss",
    "sample_negatives",
    "bank_push",
    "queue_push",
    "pixel_kl",
    "similarity_kl",
    "knn_loss",
]
