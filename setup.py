"""Build script for mona: the `mona_ext._C` extension (C++ CPU + CUDA kernels) and the `mona`
training package.

Install with ``pip install --no-build-isolation .`` (or ``-e .``): the extension must be compiled
against the torch that is installed in the environment, which build isolation would hide.

Build knobs (environment variables), all printed at configure time:

  MONA_FORCE_CPU=1        build the CPU kernels only, even when nvcc is present
  MONA_FORCE_CUDA=1       fail unless the CUDA kernels can be built
  CUDA_HOME               CUDA toolkit root (default: /usr/local/cuda if it holds bin/nvcc,
                          else the directory above the first nvcc on PATH)
  TORCH_CUDA_ARCH_LIST    CUDA archs (default: "7.5;8.0;8.6;8.9;9.0+PTX": machine code for
                          Turing..Hopper (8.6 = RTX 3090) plus compute_90 PTX, which the driver
                          JIT-compiles on a newer GPU (Blackwell, ...) at first use; without a
                          "+PTX" entry a GPU newer than the newest listed arch has no kernel
                          image). CI uses "8.6". mona_ext.build_info() reports the list
                          ("cuda_arch_list"), the archs ("cuda_archs") and "ptx".
  MAX_JOBS                parallel compile jobs (default: number of CPUs)
  MONA_DEBUG=1            -O0 -g host code and -lineinfo device code
  MONA_VERBOSE_PTXAS=1    print nvcc's register / shared-memory report for every kernel

The CUDA kernels are built whenever nvcc is found, whether or not a GPU is visible
(``torch.cuda.is_available()`` is *not* consulted: a build machine has no GPU).
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
# "+PTX" on the newest arch: also embed its PTX, so GPUs newer than 9.0 can JIT-compile the kernels.
DEFAULT_ARCH_LIST = "7.5;8.0;8.6;8.9;9.0+PTX"


def _read_version() -> str:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


VERSION = _read_version()


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _find_cuda_home() -> str | None:
    """Locate the CUDA toolkit. Prefers an explicit CUDA_HOME, then /usr/local/cuda, then nvcc on PATH.

    A wrapper at /usr/local/bin/nvcc would make torch guess CUDA_HOME=/usr/local (wrong), so we
    resolve the toolkit root ourselves and export it before torch's build helpers read it.
    """
    explicit = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if explicit:
        if not (Path(explicit) / "bin" / "nvcc").exists():
            sys.exit(f"mona build: CUDA_HOME={explicit!r} has no bin/nvcc; fix CUDA_HOME or unset it")
        return explicit
    if Path("/usr/local/cuda/bin/nvcc").exists():
        return "/usr/local/cuda"
    nvcc = shutil.which("nvcc")
    if nvcc:
        root = Path(os.path.realpath(nvcc)).parent.parent
        if (root / "include" / "cuda_runtime.h").exists():
            return str(root)
    return None


def _configure() -> dict:
    force_cpu, force_cuda = _truthy("MONA_FORCE_CPU"), _truthy("MONA_FORCE_CUDA")
    if force_cpu and force_cuda:
        sys.exit("mona build: MONA_FORCE_CPU and MONA_FORCE_CUDA are both set; choose one")
    cuda_home = None if force_cpu else _find_cuda_home()
    if force_cuda and cuda_home is None:
        sys.exit("mona build: MONA_FORCE_CUDA=1 but no CUDA toolkit (nvcc) was found; set CUDA_HOME")
    with_cuda = cuda_home is not None
    arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip() or DEFAULT_ARCH_LIST
    if with_cuda:
        os.environ["CUDA_HOME"] = cuda_home
        # torch's arch detection crashes without a visible GPU if this is unset.
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 1))
    return {
        "with_cuda": with_cuda,
        "cuda_home": cuda_home,
        "arch_list": arch_list if with_cuda else "",
        "max_jobs": os.environ["MAX_JOBS"],
        "debug": _truthy("MONA_DEBUG"),
        "verbose_ptxas": _truthy("MONA_VERBOSE_PTXAS"),
    }


def _torch_include_extras() -> list[str]:
    """CUDA wheels ship headers (cuSPARSE, cuBLAS, ...) that a bare toolkit may lack."""
    import torch

    site = Path(torch.__file__).resolve().parent.parent
    return [str(p) for p in [site / "nvidia" / "cu13" / "include"] if p.exists()]


def _cuda_version(cuda_home: str) -> str:
    version_json = Path(cuda_home) / "version.json"
    if version_json.exists():
        import json

        return json.loads(version_json.read_text())["cuda"]["version"]
    import subprocess

    out = subprocess.run([str(Path(cuda_home) / "bin" / "nvcc"), "--version"], capture_output=True, text=True)
    for token in out.stdout.replace(",", " ").split():
        if token.startswith("V") and token[1:2].isdigit():
            return token[1:]
    return "unknown"


def _version_tuple(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split(".")[:2]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def _check_cuda_compat(torch_version: str, torch_cuda: str | None, nvcc_version: str, cuda_home: str) -> str | None:
    """Why the CUDA kernels cannot be compiled against this torch with this nvcc, or None.

    torch's CUDA headers (its nvidia/cuXY wheels) refuse an nvcc older than themselves
    ("CUDA compiler and CUDA toolkit headers are incompatible") and a different major version does
    not link: both are caught here, in a second, instead of after minutes of compiling.
    """
    fix = (
        "If pip's build isolation installed a torch other than yours, build against your environment's "
        "torch: `pip install --no-build-isolation .`. Otherwise install a matching CUDA toolkit (and set "
        "CUDA_HOME), or build the CPU kernels only with MONA_FORCE_CPU=1."
    )
    if not torch_cuda:
        return (
            f"torch {torch_version} is a CPU-only build, so the CUDA kernels cannot be built against it "
            f"(nvcc {nvcc_version} was found at {cuda_home}). " + fix
        )
    t, n = _version_tuple(torch_cuda), _version_tuple(nvcc_version)
    if t[0] != n[0] or t > n:
        return (
            f"torch {torch_version} was built with CUDA {torch_cuda}, but nvcc at {cuda_home} is CUDA "
            f"{nvcc_version}: torch's CUDA {torch_cuda} headers cannot be compiled by an "
            f"{'other major' if t[0] != n[0] else 'older'} nvcc. " + fix
        )
    return None


def _write_build_info(cfg: dict, cuda_version: str, target: Path) -> None:
    """Record what build_info() reports and the compiled library cannot say itself (the arch list,
    nvcc's version, mona's version) next to the extension, after a successful build, atomically.
    Whether CUDA kernels are in and the torch built against come from mona_ext._C itself."""
    text = (
        "# Generated by setup.py at build time. Do not edit.\n"
        f"CUDA_ARCH_LIST = {cfg['arch_list']!r}\n"
        f"CUDA_VERSION = {cuda_version!r}\n"
        f"MONA_VERSION = {VERSION!r}\n"
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(target)


def _extensions():
    import torch

    cfg = _configure()
    # torch.utils.cpp_extension reads CUDA_HOME once, at import: import it only after _configure()
    # has exported the right one, and pin it in case something imported it earlier.
    import torch.utils.cpp_extension as cpp_ext
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    if cfg["with_cuda"]:
        cpp_ext.CUDA_HOME = cfg["cuda_home"]
    cuda_version = _cuda_version(cfg["cuda_home"]) if cfg["with_cuda"] else ""
    if cfg["with_cuda"]:
        # MONA_BUILD_SIMULATE_TORCH_CUDA: tests only (tests/train/test_build_info.py), pretends torch
        # was built with that CUDA version to exercise the check without another torch.
        torch_cuda = os.environ.get("MONA_BUILD_SIMULATE_TORCH_CUDA") or torch.version.cuda
        problem = _check_cuda_compat(torch.__version__, torch_cuda, cuda_version, cfg["cuda_home"])
        if problem:
            sys.exit("mona build: " + problem)

    # csrc/emu is the test-only CPU emulation of the CUDA kernels (tests/ops/emu.py), never in the wheel.
    def sources(pattern: str) -> list[str]:
        return sorted(p for p in glob.glob(pattern, recursive=True) if not p.startswith("csrc/emu/"))

    cpp_sources = sources("csrc/**/*.cpp")
    cu_sources = sources("csrc/**/*.cu") if cfg["with_cuda"] else []

    print("=" * 72)
    print("mona build configuration")
    print(f"  torch           {torch.__version__} (CUDA build: {torch.version.cuda or 'no'})")
    print(
        f"  CUDA kernels    {'yes' if cfg['with_cuda'] else 'no'}"
        + ("" if cfg["with_cuda"] else "  (MONA_FORCE_CPU=1)" if _truthy("MONA_FORCE_CPU") else "  (no nvcc found)")
    )
    if cfg["with_cuda"]:
        print(f"  CUDA_HOME       {cfg['cuda_home']} (nvcc {cuda_version})")
        print(f"  arch list       {cfg['arch_list']}")
    print(f"  MAX_JOBS        {cfg['max_jobs']}")
    print(f"  sources         {len(cpp_sources)} C++, {len(cu_sources)} CUDA")
    print(f"  debug           {cfg['debug']}")
    print("=" * 72)

    cfg["cuda_version"] = cuda_version

    opt = ["-O0", "-g"] if cfg["debug"] else ["-O3"]
    define_macros = [("MONA_TORCH_VERSION", f'"{torch.__version__}"')]
    cxx = opt + ["-std=c++20", "-fdiagnostics-color=always"]
    include_dirs = [str(ROOT / "csrc")]
    if not cfg["with_cuda"]:
        return [
            CppExtension(
                "mona_ext._C",
                cpp_sources,
                include_dirs=include_dirs,
                define_macros=define_macros,
                extra_compile_args={"cxx": cxx},
                py_limited_api=True,
            )
        ], cfg
    define_macros.append(("MONA_WITH_CUDA", "1"))
    nvcc = opt + ["-std=c++20", "--expt-relaxed-constexpr", "-DNDEBUG" if not cfg["debug"] else "-lineinfo"]
    if cfg["verbose_ptxas"]:
        nvcc.append("-Xptxas=-v")
    include_dirs += _torch_include_extras()
    return [
        CUDAExtension(
            "mona_ext._C",
            cpp_sources + cu_sources,
            include_dirs=include_dirs,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
            py_limited_api=True,
        )
    ], cfg


def _cmdclass():
    from torch.utils.cpp_extension import BuildExtension

    base = BuildExtension.with_options(use_ninja=True)

    class BuildExtensionWithInfo(base):
        """Writes mona_ext/_build_info.py only once the extension has compiled: in the source tree
        for an in-place (editable) build, into the build directory (the wheel) otherwise, so that a
        failed or non-editable build never rewrites the one the source tree's binary goes with."""

        def run(self):
            super().run()
            in_tree = self.inplace or getattr(self, "editable_mode", False)  # pip install -e: PEP 660
            target = (ROOT if in_tree else Path(self.build_lib)) / "mona_ext" / "_build_info.py"
            _write_build_info(_cfg, _cfg["cuda_version"], target)

    return {"build_ext": BuildExtensionWithInfo}


ext_modules, _cfg = _extensions()

setup(
    packages=find_packages(include=["mona_ext", "mona_ext.*"])
    + find_packages(where="python", include=["mona", "mona.*"]),
    package_dir={"mona": "python/mona"},
    package_data={"mona": ["data/splits/*/*.list", "data/splits/README.md", "configs/*.yaml"]},
    ext_modules=ext_modules,
    cmdclass=_cmdclass(),
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
