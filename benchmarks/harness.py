"""Benchmark harness: steady-state time and extra peak memory of a callable, in separate passes.

A benchmark module defines factories ``make_<variant>(device, **config) -> run`` that build the
inputs and return a zero-argument ``run()`` (one training-loop iteration of the thing measured,
usually forward + backward). Inputs, and the gradients ``run()`` produces, have the same sizes every
call, as in a training loop.

``measure()`` runs a factory twice, each time in a fresh process (``python -m benchmarks.harness
child ...``), so that nothing one variant cached can hide or inflate another's figures:

* **time pass** (the environment as the user has it: glibc's and PyTorch's allocators with their
  defaults, which reuse memory between iterations): ``warmup`` calls, then ``repeats`` timed calls;
  ``median_s`` is their median (``times_s`` all of them). This is what a training loop sees after its
  first iterations.
* **memory pass**: the peak of one call above what was resident right before it, inputs built
  (``extra_peak_mb``; the outputs a call keeps, e.g. the gradients, included). If ``run`` has a
  ``release()`` attribute (see :func:`releasing`), a warm-up call runs first and its outputs are
  released before the measured call; otherwise the first call of the process is measured. On CPU: the process's peak RSS (VmHWM, reset through /proc/self/clear_refs),
  with ``MALLOC_MMAP_THRESHOLD_=65536`` in this pass only, so that freed blocks go back to the OS and
  RSS follows live memory (in the time pass that setting would turn every large allocation into fresh
  page faults, a cost no training loop pays). On CUDA: ``torch.cuda.max_memory_allocated`` above the
  allocated bytes before the call (the caching allocator's defaults in both passes).

``compare()`` runs several variants over a list of configurations and writes one table (time and
memory side by side, ratios against a baseline variant, all from the same run) as JSON + markdown
under benchmarks/results/. Timings are medians on a possibly shared machine: compare ratios within
one run, not across runs. Method and results: benchmarks/README.md.

A comparison benchmark is data: its module declares ``BENCH = Benchmark(name=..., variants=[...],
configs=[...], quick=[...], columns=[...], ...)`` and ends with ``if __name__ == "__main__":
main(BENCH)``; :func:`main` parses the common arguments (:func:`bench_arguments` and the
benchmark's ``options``) and calls :func:`compare`.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
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


# The environment of a CPU memory pass: large blocks come from mmap and go back to the OS when freed,
# so RSS follows live memory (in a time pass this would turn every large allocation into fresh page
# faults, a cost no training loop pays).
MEMORY_PASS_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def peak_of(call: Callable[[], Any], cuda: bool) -> tuple[int, int]:
    """(bytes in use before ``call()``, peak bytes during it): on CUDA the caching allocator's live
    bytes and ``max_memory_allocated``; on the CPU the process's RSS and its peak (VmHWM, reset
    first). The caller collects garbage and synchronises before, as its measurement requires."""
    import torch

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        call()
        torch.cuda.synchronize()
        return base, torch.cuda.max_memory_allocated()
    _reset_peak_rss()
    base = _rss_kb("VmRSS") * 1024
    call()
    return base, _rss_kb("VmHWM") * 1024


def _child(spec: str, config_json: str) -> None:
    import torch

    module_name, factory_name = spec.split(":")
    config = json.loads(config_json)
    mode = config.pop("_mode")
    repeats, warmup = config.pop("_repeats"), config.pop("_warmup")
    threads = config.pop("_threads", None)
    if threads:
        torch.set_num_threads(threads)
    device = config.get("device", "cpu")
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    factory: Callable[..., Callable[[], Any]] = getattr(importlib.import_module(module_name), factory_name)
    run = factory(**config)
    if mode == "memory":
        # After a warm-up call (lazy initialisation is not the step's memory), release() frees what
        # that call kept (e.g. the gradients), so that the measured call's outputs count in full.
        # A factory without release(): the first call of the fresh process is measured.
        release = getattr(run, "release", None)
        if release is not None:
            run()
            release()
        gc.collect()
        base, peak = peak_of(run, cuda)
        print(json.dumps({"extra_peak_mb": max(0, peak - base) / 2**20}))
        return
    times = []
    for i in range(warmup + repeats):
        sync()
        t0 = time.perf_counter()
        run()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    print(json.dumps({"times_s": times, "median_s": statistics.median(times)}))


def releasing(run: Callable[[], Any], *tensors: Any, outputs: list | None = None) -> Callable[[], Any]:
    """Gives ``run`` the ``release()`` of the memory pass: drops the ``.grad`` of ``tensors`` and
    empties the list ``outputs`` (what a call keeps until the next one)."""

    def release() -> None:
        for t in tensors:
            t.grad = None
        if outputs is not None:
            outputs.clear()

    run.release = release  # type: ignore[attr-defined]
    return run


def _spawn(spec: str, mode: str, payload: dict, timeout: float) -> dict:
    env = dict(os.environ)
    if mode == "memory":
        env.update(MEMORY_PASS_ENV)
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.harness", "child", spec, json.dumps({**payload, "_mode": mode})],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark {spec} {payload} ({mode} pass) failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(
    spec: str,
    repeats: int = 5,
    warmup: int = 3,
    threads: int | None = None,
    timeout: float = 1800,
    memory: bool = True,
    **config: Any,
) -> dict:
    """Time pass + memory pass of factory ``spec`` ("module:function") with ``config`` (module doc).

    Returns ``{"median_s", "times_s", "extra_peak_mb"}`` (``extra_peak_mb`` is NaN with ``memory=False``).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"measure: repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    payload = {**config, "_repeats": repeats, "_warmup": warmup, "_threads": threads}
    out = _spawn(spec, "time", payload, timeout)
    out["extra_peak_mb"] = _spawn(spec, "memory", payload, timeout)["extra_peak_mb"] if memory else float("nan")
    return out


@dataclass
class Variant:
    """One side of a comparison: ``label`` (column prefix), ``spec`` ("module:factory"), ``title``
    (column header), ``memory`` (run the memory pass), ``repeats`` (overrides ``--repeats``, e.g.
    for a very slow baseline)."""

    label: str
    spec: str
    title: str
    memory: bool = True
    repeats: int | None = None


def bench_arguments(doc: str, repeats: int = 7, warmup: int = 3) -> argparse.ArgumentParser:
    """The arguments every benchmark takes: --device, --repeats, --warmup, --quick."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--repeats", type=int, default=repeats, help=f"timed calls per variant (default {repeats})")
    ap.add_argument("--warmup", type=int, default=warmup, help=f"untimed calls before them (default {warmup})")
    ap.add_argument("--quick", action="store_true", help="one small configuration (CI's smoke run)")
    return ap


@dataclass
class Benchmark:
    """A comparison benchmark, declared as data by its module (``BENCH = Benchmark(...)``).

    name: results go to ``results/<name>_<device><name_suffix>.{json,md}``.
    doc: the module's ``__doc__`` (the ``--help`` text).
    variants: the sides compared; ``baseline``: the label the ratios are taken against.
    configs, quick: the configurations (keyword arguments of every variant's factory) of a full run
        and of ``--quick`` (CI's smoke run).
    columns: ``[(key, header)]`` of the configuration columns (keys of a config or of ``describe``).
    notes: the text under the table.
    describe(config): display columns added to a row (e.g. "NCHW" for ``channels_last=False``).
    per(config): divides a row's times (e.g. by the number of pushes).
    repeats(config): timed calls for a slow configuration; None (or no ``repeats``): ``--repeats``.
    derive(row): columns computed from the measurements, shown as ``extra_columns``.
    ratios: ``[(slow, fast)]`` label pairs of the ratio columns (default: baseline vs every other).
    default_repeats, default_warmup: the defaults of ``--repeats`` / ``--warmup``.
    options: extra command-line options, ``[(flags, add_argument keywords)]``.
    configure(bench, args): called with the parsed arguments when the options change the
        benchmark; returns the benchmark to run (e.g. ``dataclasses.replace(bench, configs=...)``), or
        None when it did the run itself (e.g. a different mode).
    name_suffix, meta_extra: appended to the results' name / merged into their ``machine`` record.
    """

    name: str
    doc: str
    variants: list[Variant]
    configs: list[dict]
    quick: list[dict]
    columns: list[tuple[str, str]]
    baseline: str
    notes: str = ""
    describe: Callable[[dict], dict] | None = None
    per: Callable[[dict], float] | None = None
    repeats: Callable[[dict], int | None] | None = None
    derive: Callable[[dict], dict] | None = None
    extra_columns: list[tuple[str, str]] = field(default_factory=list)
    ratios: list[tuple[str, str]] | None = None
    default_repeats: int = 7
    default_warmup: int = 3
    options: list[tuple[tuple[str, ...], dict]] = field(default_factory=list)
    configure: Callable[[Benchmark, argparse.Namespace], Benchmark | None] | None = None
    name_suffix: str = ""
    meta_extra: dict | None = None


def main(bench: Benchmark, argv: list[str] | None = None) -> list[dict] | None:
    """The command line of every comparison benchmark: ``python -m benchmarks.bench_X [--device cpu|cuda]
    [--repeats N] [--warmup N] [--quick]`` and the benchmark's ``options``; runs :func:`compare`."""
    ap = bench_arguments(bench.doc, repeats=bench.default_repeats, warmup=bench.default_warmup)
    for flags, kwargs in bench.options:
        ap.add_argument(*flags, **kwargs)
    args = ap.parse_args(argv)
    if bench.configure is not None:
        bench = bench.configure(bench, args)
        if bench is None:
            return None
    return compare(bench, args)


def compare(bench: Benchmark, args: argparse.Namespace) -> list[dict]:
    """Measure every variant of ``bench`` on every configuration (``bench.quick`` with ``args.quick``)
    and write ``results/<name>_<device><name_suffix>.{json,md}``.

    Per row: ``<label>_ms`` (median per call, divided by ``per(config)`` if given, e.g. per push) and
    ``<label>_mb`` for every variant; for each pair ``(slow, fast)`` of ``ratios`` (default: the
    baseline against every other variant) ``x_<slow>_<fast>`` = slow time / fast time (how many
    times faster ``fast`` is) and ``m_<fast>_<slow>`` = fast memory / slow memory. ``describe(config)``
    adds display columns; ``repeats(config)`` overrides ``args.repeats`` for slow configurations;
    ``derive(row)`` adds columns computed from the measurements (shown as ``extra_columns``).
    Returns the rows; prints each as it is measured and the table at the end.
    """
    variants = bench.variants
    by_label = {v.label: v for v in variants}
    pairs = bench.ratios or [(bench.baseline, v.label) for v in variants if v.label != bench.baseline]
    rows = []
    for cfg in bench.quick if args.quick else bench.configs:
        row = {**cfg, **(bench.describe(cfg) if bench.describe else {})}
        scale = bench.per(cfg) if bench.per else 1.0
        for v in variants:
            n = v.repeats or (bench.repeats(cfg) if bench.repeats else None) or args.repeats
            r = measure(
                v.spec,
                repeats=n,
                warmup=args.warmup if n > 1 or not v.repeats else 1,
                device=args.device,
                memory=v.memory,
                **cfg,
            )
            row[f"{v.label}_ms"] = r["median_s"] * 1e3 / scale
            row[f"{v.label}_mb"] = r["extra_peak_mb"]
        for slow, fast in pairs:
            row[f"x_{slow}_{fast}"] = row[f"{slow}_ms"] / row[f"{fast}_ms"]
            if by_label[slow].memory and by_label[fast].memory:
                row[f"m_{fast}_{slow}"] = row[f"{fast}_mb"] / max(row[f"{slow}_mb"], 1e-9)
        if bench.derive:
            row.update(bench.derive(row))
        rows.append(row)
        print(row, flush=True)
    cols = list(bench.columns)
    cols += [(f"{v.label}_ms", f"{v.title} ms") for v in variants]
    cols += [(f"x_{s}_{f}", f"{by_label[s].title} / {by_label[f].title} time") for s, f in pairs]
    cols += [(f"{v.label}_mb", f"{v.title} MB") for v in variants if v.memory]
    cols += [
        (f"m_{f}_{s}", f"{by_label[f].title} / {by_label[s].title} memory")
        for s, f in pairs
        if by_label[s].memory and by_label[f].memory
    ]
    cols += list(bench.extra_columns)
    meta = machine_info(args.device)
    meta["method"] = {"warmup": args.warmup, "repeats": args.repeats}
    meta.update(bench.meta_extra or {})
    path = write_results(f"{bench.name}_{args.device}{bench.name_suffix}", rows, cols, meta, bench.notes)
    print(path.read_text())
    return rows


def machine_info(device: str = "cpu") -> dict:
    import torch

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
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
    md = [
        f"# {name}",
        "",
        f"Machine: {meta.get('gpu') or meta['cpu']}, {meta['cores']} cores, "
        f"torch {meta['torch']} ({meta['torch_threads']} threads), device {meta['device']}{env}, {meta['date']}.",
        "",
    ]
    if "method" in meta:
        md += [
            f"Steady state: {meta['method']['warmup']} warm-up calls, then the median of {meta['method']['repeats']} "
            "timed calls (allocator defaults); memory = peak of one call above the resident set before it, "
            "in a separate process (benchmarks/README.md).",
            "",
        ]
    md += [markdown_table(rows, columns), ""]
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
