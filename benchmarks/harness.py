"""Benchmark harness: time and extra peak memory of a callable, each variant in a fresh process.

A benchmark module defines factories ``make_<variant>(device, **config) -> run`` that build the
inputs and return a zero-argument ``run()`` (forward + backward). ``measure()`` runs one factory in
a child process (``python -m benchmarks.harness child ...``) so that allocator caches of one variant
never hide the memory of another, and reports:

* ``median_s`` / ``times_s``: wall time of ``run()`` over ``repeats`` calls after one warm-up;
* ``extra_peak_mb``: peak memory above what was resident right before the first call —
  on CPU the process's peak RSS (VmHWM, reset through /proc/self/clear_refs), on CUDA
  ``torch.cuda.max_memory_allocated`` above the allocated bytes before the call.

Results are written by ``write_results`` as JSON + a markdown table under benchmarks/results/.
Timings are medians of repeats on a possibly shared machine: compare ratios from one run.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

# Where results are written; MONA_BENCH_RESULTS redirects them (CI's smoke runs use a temp dir).
RESULTS = Path(os.environ.get("MONA_BENCH_RESULTS", Path(__file__).resolve().parent / "results"))


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def _child(spec: str, config_json: str) -> None:
    import torch

    module_name, factory_name = spec.split(":")
    config = json.loads(config_json)
    repeats = config.pop("_repeats")
    threads = config.pop("_threads", None)
    if threads:
        torch.set_num_threads(threads)
    device = config.get("device", "cpu")
    cuda = device.startswith("cuda")
    factory: Callable[..., Callable[[], Any]] = getattr(importlib.import_module(module_name), factory_name)
    run = factory(**config)
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        _reset_peak_rss()
        base = _rss_kb("VmRSS") * 1024
    t0 = time.perf_counter()
    run()
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _rss_kb("VmHWM") * 1024
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        gc.collect()
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        run()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"first_s": first, "times_s": times, "median_s": statistics.median(times) if times else first,
                      "extra_peak_mb": max(0, peak - base) / 2**20}))


def measure(spec: str, repeats: int = 5, threads: int | None = None, timeout: float = 1800, **config: Any) -> dict:
    """Run factory ``spec`` ("module:function") with ``config`` in a fresh process; see module doc."""
    env = dict(os.environ)
    # Large blocks come from mmap and go back to the OS when freed, so RSS follows live memory.
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    payload = json.dumps({**config, "_repeats": repeats, "_threads": threads})
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-m", "benchmarks.harness", "child", spec, payload], cwd=root, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark {spec} {config} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine_info(device: str = "cpu") -> dict:
    import torch

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "device": device,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """``columns`` = [(key, header)]; floats get 3 significant digits (no exponent below 1e6)."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.0f}" if 100 <= abs(v) < 1e6 else f"{v:.3g}"
        return str(v)

    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(k, "")) for k, _ in columns) + " |" for r in rows]
    return "\n".join(lines)


def rerender(name: str, columns: list[tuple[str, str]], notes: str = "") -> Path:
    """Rewrite ``results/<name>.md`` from its JSON (after a change of columns or formatting)."""
    data = json.loads((RESULTS / f"{name}.json").read_text())
    return write_results(name, data["rows"], columns, data["machine"], notes)


def write_results(name: str, rows: list[dict], columns: list[tuple[str, str]], meta: dict, notes: str = "") -> Path:
    """Write ``results/<name>.json`` and ``results/<name>.md`` atomically; returns the .md path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {"benchmark": name, "machine": meta, "rows": rows}
    env = "".join(f", {k}={v}" for k, v in meta.get("env", {}).items())
    md = [f"# {name}", "", f"Machine: {meta.get('gpu') or meta['cpu']}, {meta['cores']} cores, "
          f"torch {meta['torch']} ({meta['torch_threads']} threads), device {meta['device']}{env}, {meta['date']}.",
          "", markdown_table(rows, columns), ""]
    if notes:
        md += [notes, ""]
    for suffix, text in ((".json", json.dumps(data, indent=2)), (".md", "\n".join(md))):
        path = RESULTS / f"{name}{suffix}"
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return RESULTS / f"{name}.md"


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "child":
        _child(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: python -m benchmarks.harness child MODULE:FACTORY CONFIG_JSON (internal)")
