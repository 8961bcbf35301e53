"""Loading the compiled library and reporting what was built."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import torch

_REBUILD = (
    "Rebuild the extension against the torch in this environment: "
    "`pip install --no-build-isolation -e .` (or without -e) from the mona source tree."
)


def load_library() -> ModuleType:
    """Import ``mona_ext._C`` or fail loudly, saying why and how to fix it."""
    try:
        lib = importlib.import_module("mona_ext._C")
    except ImportError as err:
        raise ImportError(
            f"mona_ext: could not load the compiled library mona_ext._C ({err}). It is either not "
            f"built or was built against a different torch than the installed {torch.__version__}. "
            + _REBUILD
        ) from err
    compiled = lib.compiled_with()
    if compiled["torch_version"] != torch.__version__:
        raise ImportError(
            f"mona_ext: the compiled library was built against torch {compiled['torch_version']}, "
            f"but torch {torch.__version__} is installed; mixing them is undefined behaviour. " + _REBUILD
        )
    return lib


def _op_names() -> list[str]:
    """Every operator registered in the ``mona`` namespace (schemas from csrc/)."""
    return sorted({n.split("::", 1)[1].split(".")[0] for n in torch._C._dispatch_get_all_op_names()
                   if n.startswith("mona::")})


def build_info() -> dict[str, Any]:
    """What was built: CUDA kernels or not, arch list, torch/CUDA versions, and the kernels per op.

    Returns a dict with keys ``mona_version``, ``with_cuda``, ``cuda_arch_list``, ``cuda_version``
    (nvcc used, "" without CUDA), ``torch_version`` (built against), ``torch_runtime``,
    ``cuda_available`` (a GPU is visible now) and ``ops`` ({name: [dispatch keys with a kernel]}:
    "CPU" / "CUDA" for device kernels, "CompositeImplicitAutograd" for an op composed of other ops).
    """
    from . import _build_info as b  # written by setup.py / CMake at build time

    lib = importlib.import_module("mona_ext._C")
    compiled = lib.compiled_with()
    ops = {}
    for name in _op_names():
        keys = [
            key
            for key in ("CPU", "CUDA", "CompositeImplicitAutograd")
            if torch._C._dispatch_has_kernel_for_dispatch_key(f"mona::{name}", key)
        ]
        ops[name] = keys
    return {
        "mona_version": b.MONA_VERSION,
        "with_cuda": bool(compiled["cuda"]),
        "cuda_arch_list": b.CUDA_ARCH_LIST,
        "cuda_version": b.CUDA_VERSION,
        "torch_version": compiled["torch_version"],
        "torch_runtime": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "ops": ops,
    }
