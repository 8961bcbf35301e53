"""setup.py's configure step: a torch / nvcc CUDA mismatch stops the build within seconds with one
paragraph naming the versions and the fix, before anything is compiled or written."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def fake_toolkit(tmp_path: Path, version: str) -> Path:
    """A CUDA_HOME whose nvcc reports `version` (the build reads version.json, else nvcc --version)."""
    home = tmp_path / f"cuda-{version}"
    (home / "bin").mkdir(parents=True)
    nvcc = home / "bin" / "nvcc"
    nvcc.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {version}, V{version}.0'\n")
    nvcc.chmod(0o755)
    (home / "include").mkdir()
    (home / "include" / "cuda_runtime.h").write_text("")
    (home / "version.json").write_text('{"cuda": {"version": "%s.0"}}' % version)
    return home


def run_setup(tmp_path: Path, cuda_home: Path, torch_cuda: str) -> tuple[subprocess.CompletedProcess, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("MONA_FORCE_CPU", "MONA_FORCE_CUDA")}
    env.update(CUDA_HOME=str(cuda_home), MONA_BUILD_SIMULATE_TORCH_CUDA=torch_cuda, TORCH_CUDA_ARCH_LIST="8.6")
    t0 = time.time()
    # build_ext into a scratch directory: a build that got past the check would not touch the tree
    proc = subprocess.run(
        [
            sys.executable,
            "setup.py",
            "build_ext",
            "--build-lib",
            str(tmp_path / "lib"),
            "--build-temp",
            str(tmp_path / "tmp"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return proc, time.time() - t0


def test_newer_torch_cuda_than_nvcc_fails_fast_with_the_fix(tmp_path):
    info = ROOT / "mona_ext" / "_build_info.py"
    before = info.read_bytes() if info.exists() else None
    proc, _ = run_setup(tmp_path, fake_toolkit(tmp_path, "13.0"), "13.2")
    assert proc.returncode != 0
    err = proc.stderr
    assert "torch's CUDA 13.2 headers cannot be compiled by an older nvcc" in err
    assert "nvcc at " + str(tmp_path) in err and "is CUDA 13.0.0" in err
    assert "pip install --no-build-isolation ." in err and "MONA_FORCE_CPU=1" in err
    # the check comes before compiling: nothing was compiled (a property, not a wall-clock limit)
    assert not (tmp_path / "tmp").exists() and not (tmp_path / "lib").exists()
    assert (info.read_bytes() if info.exists() else None) == before  # build metadata untouched


def test_other_major_cuda_fails_fast(tmp_path):
    proc, _ = run_setup(tmp_path, fake_toolkit(tmp_path, "12.8"), "13.0")
    assert proc.returncode != 0 and "cannot be compiled by an other major nvcc" in proc.stderr


@pytest.mark.parametrize("torch_cuda", ["13.0", "12.9"])
def test_compatible_versions_pass_the_check(torch_cuda):
    sys.path.insert(0, str(ROOT))
    try:
        import importlib.util

        spec = importlib.util.spec_from_file_location("mona_setup_funcs", ROOT / "setup.py")
        source = (ROOT / "setup.py").read_text().split("\next_modules, _cfg = _extensions()")[0]
        namespace: dict = {"__name__": "mona_setup_funcs", "__file__": str(ROOT / "setup.py")}
        exec(compile(source, str(spec.origin), "exec"), namespace)  # the helpers only, no build
    finally:
        sys.path.pop(0)
    check = namespace["_check_cuda_compat"]
    nvcc = "13.0.88" if torch_cuda.startswith("13") else "12.9.1"
    assert check("2.14.1", torch_cuda, nvcc, "/usr/local/cuda") is None
    assert "CPU-only build" in check("2.14.1+cpu", None, "13.0.88", "/usr/local/cuda")
