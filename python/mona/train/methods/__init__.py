"""Training methods: one class per ``method`` value of the config (see :mod:`.base` for the protocol)."""

from __future__ import annotations

from .base import Batch, Method, RunContext, load_init_weights
from .bcp import BCP, BCPPretrain
from .glcon import GLCon
from .mean_teacher import MeanTeacher
from .mona import Mona
from .supervised import Supervised, SupervisedStrong
from .unimatch import UniMatch

METHOD_CLASSES: dict[str, type[Method]] = {
    "supervised": Supervised,
    "supervised_strong": SupervisedStrong,
    "mean_teacher": MeanTeacher,
    "glcon": GLCon,
    "mona": Mona,
    "unimatch": UniMatch,
    "bcp_pretrain": BCPPretrain,
    "bcp": BCP,
}

__all__ = [
    "Batch",
    "Method",
    "RunContext",
    "METHOD_CLASSES",
    "Supervised",
    "SupervisedStrong",
    "MeanTeacher",
    "GLCon",
    "Mona",
    "UniMatch",
    "BCP",
    "BCPPretrain",
    "load_init_weights",
]
