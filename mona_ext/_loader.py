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
            f"built or was built against a different torch than the installed {torch.__version__}. " + _REBUILD
        ) from err
    compiled = lib.compiled_with()
    if compiled["torch_version"] != torch.__version__:
        raise ImportError(
            f"mona_ext: the compiled library was built against torch {compiled['torch_version']}, "
            f"but torch {torch.__version__} is installed; mixing them is undefined behaviour. " + _REBUILD
        )
    return lib


# torch.utils.cpp_extension's named archs (torch 2.14), combined names before single ones.
_NAMED_ARCHES = (
    ("Kepler+Tesla", "3.7"),
    ("Kepler", "3.5+PTX"),
    ("Maxwell+Tegra", "5.3"),
    ("Maxwell", "5.0;5.2+PTX"),
    ("Pascal", "6.0;6.1+PTX"),
    ("Volta+Tegra", "7.2"),
    ("Volta", "7.0+PTX"),
    ("Turing", "7.5+PTX"),
    ("Ampere+Tegra", "8.7"),
    ("Ampere", "8.0;8.6+PTX"),
    ("Ada", "8.9+PTX"),
    ("Hopper", "9.0+PTX"),
    ("Blackwell+Tegra", "11.0"),
    ("Blackwell", "10.0;10.3;12.0;12.1+PTX"),
    ("Rubin", "10.7+PTX"),
)


def parse_arch_list(arch_list: str) -> tuple[list[str], bool]:
    """Split a ``TORCH_CUDA_ARCH_LIST`` string into ``(archs, ptx)``.

    ``archs`` are the compute capabilities in order, without duplicates and without the ``+PTX``
    suffix (``"8.6"``, ``"9.0a"``); ``ptx`` is True when any entry ends with ``+PTX``, i.e. the
    build also embeds PTX that the driver can JIT-compile for a newer GPU. Entries may be separated
    by ``;``, spaces or commas (torch itself accepts ``;`` and spaces); torch's named archs
    (``"Ampere"``, ``"Hopper"``, ...) are expanded as torch expands them. ``"native"`` (the visible
    GPUs, resolved by torch at build time) is kept as the entry ``"native"`` with ``ptx`` True,
    since torch adds PTX to the newest native arch. ``""`` -> ``([], False)``.

    >>> parse_arch_list("7.5;8.6+PTX")
    (['7.5', '8.6'], True)
    """
    text = arch_list.strip()
    for name, archs in _NAMED_ARCHES:
        text = text.replace(name, archs)
    archs: list[str] = []
    ptx = False
    for entry in text.replace(",", ";").replace(" ", ";").split(";"):
        entry = entry.strip()
        if not entry:
            continue
        if entry == "native":
            ptx = True
        elif entry.upper().endswith("+PTX"):
            entry, ptx = entry[: -len("+PTX")], True
        if entry not in archs:
            archs.append(entry)
    return archs, ptx


def _op_names() -> list[str]:
    """Every operator registered in the ``mona`` namespace (schemas from csrc/)."""
    return sorted(
        {n.split("::", 1)[1].split(".")[0] for n in torch._C._dispatch_get_all_op_names() if n.startswith("mona::")}
    )


def build_info() -> dict[str, Any]:
    """What was built: CUDA kernels or not, arch list, torch/CUDA versions, and the kernels per op.

    Returns a dict with keys ``mona_version``, ``with_cuda``, ``cuda_arch_list`` (the
    ``TORCH_CUDA_ARCH_LIST`` string the kernels were compiled for, "" without CUDA),
    ``cuda_archs`` (the compute capabilities with machine code in the library, e.g.
    ``["7.5", "8.6"]``, [] without CUDA), ``ptx`` (True when PTX is embedded too -- an entry ended
    with ``+PTX`` -- so that a GPU newer than every listed arch can JIT-compile the kernels; False
    without CUDA), ``cuda_version`` (nvcc used, "" without CUDA), ``torch_version`` (built
    against), ``torch_runtime``, ``cuda_available`` (a GPU is visible now) and ``ops``
    ({name: [dispatch keys with a kernel]}: "CPU" / "CUDA" for device kernels,
    "CompositeImplicitAutograd" for an op composed of other ops). ``cuda_archs`` and ``ptx`` are
    ``parse_arch_list(cuda_arch_list)``.
    """
    from . import _build_info as b  # written by setup.py at build time (the CMake build writes none)

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
    with_cuda = bool(compiled["cuda"])
    arch_list = b.CUDA_ARCH_LIST if with_cuda else ""
    cuda_archs, ptx = parse_arch_list(arch_list)
    return {
        "mona_version": b.MONA_VERSION,
        "with_cuda": with_cuda,
        "cuda_arch_list": arch_list,
        "cuda_archs": cuda_archs,
        "ptx": ptx,
        "cuda_version": b.CUDA_VERSION,
        "torch_version": compiled["torch_version"],
        "torch_runtime": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "ops": ops,
    }
