"""mona: the MONA training package (data, models, augmentation, training, evaluation, CLI).

The fused ops live in the sibling package ``mona_ext`` (``torch.ops.mona.*``).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mona")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
