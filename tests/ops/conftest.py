"""Op tests: the "emu" device row runs the whole test inside the CUDA emulation, and the session
records which CUDA kernels the emulation reached (build/emu/kernel_coverage.json).

Kernel coverage: after every test, the kernels (with template arguments) whose emulated launch count
grew are attributed to it if no earlier test launched them. At the end of a session in which the
emulation ran, the report (kernel -> source, first test, instantiations) is written and a short
table printed (`python tests/ops/emu.py --coverage-table` prints it as Markdown for the README).
With MONA_EMU_COVERAGE=1 (set by CI, for runs that collect all of tests/ops with the emu rows) the
session fails if a ``__global__`` of ``csrc/*/*_cuda.cu`` was never launched, also when the emulation
never ran at all.
"""

from __future__ import annotations

import json
import os

import emu
import pytest


@pytest.fixture(autouse=True)
def _emulated_device(request):
    callspec = getattr(request.node, "callspec", None)
    device = callspec.params.get("device") if callspec is not None else None
    if getattr(device, "emulated", False):
        with emu.emulated():
            yield
    else:
        yield


# ---------------------------------------------------------------------------------------- kernel coverage

_first_test: dict[str, str] = {}  # kernel with template arguments -> first test that launched it
_launches: dict[str, int] = {}  # kernel with template arguments -> launches so far
_report: dict | None = None


def _coverage_required() -> bool:
    return os.environ.get("MONA_EMU_COVERAGE", "").strip() not in ("", "0")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    yield
    if emu._LOADED is None:  # the emulation never ran in this process: nothing to read
        return
    for kernel, count in emu.launched_kernels().items():
        if count > _launches.get(kernel, 0):
            _first_test.setdefault(kernel, item.nodeid)
            _launches[kernel] = count


def pytest_sessionfinish(session, exitstatus):
    global _report
    required = _coverage_required()
    if not _first_test and not required:
        return
    _report = emu.coverage_report(_first_test, _launches)
    _report["pytest_args"] = [str(a) for a in session.config.invocation_params.args]  # which run wrote it
    if _first_test:
        path = emu.coverage_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_report, indent=2) + "\n")
    if required and _report["unreached"] and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _report is None:
        return
    tr = terminalreporter
    kernels, unreached, required = _report["kernels"], _report["unreached"], _coverage_required()
    tr.write_sep("-", f"emulated CUDA kernels: {len(kernels) - len(unreached)}/{len(kernels)} launched")
    if required:  # the full table: kernel, instantiations seen, first test that launched it
        width = max(len(name) for name in kernels)
        for name, entry in sorted(kernels.items(), key=lambda kv: (kv[1]["source"], kv[0])):
            where = entry["first_test"] or "NOT REACHED"
            tr.write_line(f"{name:<{width}}  {len(entry['instantiations']):>2}x  {where}")
    if _first_test:
        tr.write_line(f"report: {emu._rel(emu.coverage_path())} (Markdown: python tests/ops/emu.py --coverage-table)")
    if unreached:
        msg = f"never launched under the emulation: {', '.join(unreached)}"
        if required:
            tr.write_line(f"MONA_EMU_COVERAGE=1 fails the session: {msg}", red=True, bold=True)
        else:
            tr.write_line(msg, yellow=True)
