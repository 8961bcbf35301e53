"""mona_ext: fused C++/CUDA ops for MONA, registered as ``torch.ops.mona.*``.

Importing this package loads the compiled library ``mona_ext._C`` (which registers the CPU and,
when built with nvcc, CUDA kernels) and then the Python side of every op: autograd formulas and
fake (meta) kernels for ``torch.compile``. Pure-PyTorch references live in ``mona_ext.reference``.
"""

from __future__ import annotations

import torch

from ._loader import build_info, load_library

_C = load_library()

from .banks import ClassMemoryBank, FeatureQueue  # noqa: E402,F401
from .ops import *  # noqa: E402,F401,F403  (registers autograd + fake kernels)
from .ops import __all__ as _ops_all  # noqa: E402

__version__ = build_info()["mona_version"]
__all__ = ["build_info", "ClassMemoryBank", "FeatureQueue", *_ops_all]

del torch
