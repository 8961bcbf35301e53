"""Python side of each op: a typed wrapper, the autograd formula and the fake kernel.

One module per op, named like the op; its C++ lives in ``csrc/<op>/``.
"""

from .bank import bank_push, queue_push
from .class_mean import class_mean
from .pixel_kl import pixel_kl

__all__ = ["class_mean", "bank_push", "queue_push", "pixel_kl"]
