"""Python side of each op: a typed wrapper, the autograd formula and the fake kernel.

One module per op, named like the op; its C++ lives in ``csrc/<op>/``.
"""

from .class_mean import class_mean

__all__ = ["class_mean"]
