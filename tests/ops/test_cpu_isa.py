"""The CPU kernels' vector paths (AVX-512 / AVX2+FMA / baseline x86-64, common/simd_cpu.h): the path
picked by the CPU agrees with the baseline path, and MONA_CPU_ISA is validated."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# Fixed float32 inputs through the multi-versioned kernels (pixel_kl's tile loop, the row dot
# products of contrast_infonce, class_mean's NCHW class sums); prints the results as JSON.
SCRIPT = r"""
import json, torch, mona_ext
g = torch.Generator().manual_seed(0)
a = torch.randn(2, 5, 37, 41, generator=g) * 3
b = torch.randn(2, 5, 37, 41, generator=g) * 3
m = torch.rand(2, 37, 41, generator=g) > 0.3
loss, _, ga, gb = torch.ops.mona.pixel_kl(a, b, m, True, True, True)
f = torch.randn(2, 70, 16, 16, generator=g).requires_grad_(True)
labels = torch.randint(0, 3, (2, 16, 16), generator=g)
c = mona_ext.contrast_loss(f, labels, 3, query_mode="all", num_queries=16, num_negatives=32,
                           generator=torch.Generator().manual_seed(1))
c.backward()
means, _ = mona_ext.class_mean(torch.randn(3, 6, 19, 23, generator=g), torch.randint(-1, 4, (3, 19, 23), generator=g), 4)
print(json.dumps({"kl": loss.item(), "ga": ga.flatten().tolist(), "gb": gb.flatten().tolist(),
                  "contrast": c.item(), "gf": f.grad.flatten().tolist(), "means": means.flatten().tolist()}))
"""


def _run(isa: str | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("MONA_CPU_ISA", None)
    if isa is not None:
        env["MONA_CPU_ISA"] = isa
    return subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)


def test_native_path_matches_baseline_path():
    import torch

    native, base = _run(None), _run("baseline")
    assert native.returncode == 0, native.stderr
    assert base.returncode == 0, base.stderr
    x, y = json.loads(native.stdout), json.loads(base.stdout)
    for key in ("kl", "contrast"):
        assert x[key] == pytest.approx(y[key], rel=1e-5)
    for key in ("ga", "gb", "gf", "means"):
        # FMA contraction and vector widths change roundings, never more than float32 noise.
        torch.testing.assert_close(torch.tensor(x[key]), torch.tensor(y[key]), rtol=1e-4, atol=1e-7)


def test_unknown_isa_is_an_error_naming_the_variable():
    out = _run("sse9")
    assert out.returncode != 0
    assert "MONA_CPU_ISA=sse9: expected baseline, avx2 or avx512" in out.stderr


def test_isa_the_cpu_lacks_is_an_error():
    with open("/proc/cpuinfo") as fh:
        flags = next((line for line in fh if line.startswith("flags")), "")
    out = _run("avx512")
    if " avx512f" in flags and " avx512vl" in flags and " avx512bw" in flags and " avx512dq" in flags:
        assert out.returncode == 0, out.stderr
    else:
        assert out.returncode != 0
        assert "MONA_CPU_ISA=avx512: this CPU supports at most" in out.stderr
