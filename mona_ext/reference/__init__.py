"""Pure-PyTorch references of the ops: slow, obvious, differentiable by autograd.

The tests compare every kernel with these and the benchmarks time them side by side.
One module per op family; everything is re-exported here (``mona_ext.reference.class_mean``).
"""

from . import contrast
from .banks import DequeBank, concat_truncate_push
from .class_mean import class_mean
from .contrast import class_pools, contrast_infonce, contrast_loss_vectorised, reco_loss_published
from .kl import knn_loss, pixel_kl, similarity_kl

__all__ = [
    "class_mean",
    "class_pools",
    "contrast",
    "contrast_infonce",
    "contrast_loss_vectorised",
    "reco_loss_published",
    "DequeBank",
    "concat_truncate_push",
    "pixel_kl",
    "similarity_kl",
    "knn_loss",
]
