"""Pure-PyTorch references of the ops: slow, obvious, differentiable by autograd.

The tests compare every kernel with these and the benchmarks time them side by side.
One module per op family; everything is re-exported here (``mona_ext.reference.class_mean``).
"""

from .banks import DequeBank, concat_truncate_push
from .class_mean import class_mean
from .kl import knn_loss, pixel_kl, similarity_kl

__all__ = ["class_mean", "DequeBank", "concat_truncate_push", "pixel_kl", "similarity_kl", "knn_loss"]
