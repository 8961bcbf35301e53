"""Training runs in child processes, several at once, with one combined progress display (``mona demo``).

Each run is ``python -m mona.runs SPEC.json``: a config (a path and its overrides) trained by
:func:`mona.train.run_stages` in its own process, so with its own torch thread count (the config's
``threads``) and its own RNG state; what it returns (or the error that stopped it) goes to the spec's
``result`` file, its log (and any traceback) to the spec's ``log`` file. A run is seeded and, at one
torch thread, computes the same weights in a child as in the calling process.

:func:`run_jobs` starts the jobs in the order given, at most ``slots`` at once, and shows their
progress in one place: on a terminal, one status line refreshed in place; otherwise (a log, CI) a
plain line every 10 % of the total. A job that fails stops the others and raises :class:`JobFailed`;
so does Ctrl-C (``KeyboardInterrupt``): no child outlives the call.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TextIO

from .errors import UsageError


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def default_jobs(n_runs: int, device: str, cores: int | None = None) -> int:
    """How many runs train at once by default: on a CPU one per usable core (at most ``n_runs``); on a
    GPU one (the runs would share the one device)."""
    if str(device).startswith("cuda"):
        return 1
    return max(1, min(n_runs, usable_cores() if cores is None else cores))


def check_jobs(jobs: int | None, command: str = "demo") -> None:
    """``--jobs`` must be None (the default) or >= 1."""
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise UsageError(f"{command}: --jobs (training runs at once) must be an integer >= 1, got {jobs!r}")


class StageProgress:
    """Iterations done of a run's stages, read from the ``metrics.jsonl`` each stage appends to every
    ``log_every`` iterations. A file older than the run's start (left by an earlier run into the same
    directory, removed when the stage starts) counts as nothing."""

    def __init__(self, stages: list[tuple[str | Path, int]]):
        self.stages = [(Path(d) / "metrics.jsonl", int(n)) for d, n in stages]
        self.total = sum(n for _, n in self.stages)
        self.start = time.time()
        self._seen: dict[Path, tuple[int, int, int]] = {}  # file -> (inode, offset, last iteration)

    def _iteration(self, path: Path) -> int:
        try:
            st = path.stat()
        except OSError:
            return 0
        if st.st_mtime < self.start - 1:
            return 0
        inode, offset, last = self._seen.get(path, (st.st_ino, 0, 0))
        if inode != st.st_ino or st.st_size < offset:  # recreated: read it again
            offset, last = 0, 0
        try:
            with path.open("rb") as fh:
                fh.seek(offset)
                data = fh.read()
        except OSError:
            return last
        end = data.rfind(b"\n") + 1  # a last line still being written waits for the next poll
        for line in data[:end].splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("kind") == "train" and isinstance(rec.get("iteration"), int):
                last = max(last, rec["iteration"])
        self._seen[path] = (st.st_ino, offset + end, last)
        return last

    def __call__(self) -> tuple[int, int]:
        done = 0
        for path, n in self.stages:
            it = min(self._iteration(path), n)
            done += it
            if it < n:  # a later stage has not started
                break
        return done, self.total


@dataclass
class Job:
    """One child process: ``argv`` with stdout and stderr to ``log``; ``progress() -> (done, total)``;
    ``total``: the total known before it starts (0: unknown until then)."""

    name: str
    label: str
    argv: list[str]
    log: Path
    progress: Callable[[], tuple[int, int]] = lambda: (0, 0)
    env: dict[str, str] | None = None
    total: int = 0
    done: int = field(default=0, init=False)
    state: str = field(default="waiting", init=False)  # waiting, running, done
    wall_s: float = field(default=0.0, init=False)


class JobFailed(RuntimeError):
    """A child exited with an error (``returncode`` > 0) or was killed by a signal (< 0)."""

    def __init__(self, job: Job, returncode: int):
        self.job, self.returncode = job, returncode
        self.how = f"was killed by signal {-returncode}" if returncode < 0 else f"exited with code {returncode}"
        super().__init__(f"{job.name} {self.how} (log: {job.log})")


def log_tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


class _Display:
    def __init__(self, jobs: list[Job], mode: str, log: Callable[[str], object], stream: TextIO):
        self.jobs, self.mode, self.log, self.stream = jobs, mode, log, stream
        self.t0 = time.time()
        self.next_tenth = 1
        self.shown = False

    def line(self) -> str:
        cells = []
        for j in self.jobs:
            if j.state == "done":
                cells.append(f"{j.label} done ({j.wall_s:.0f} s)")
            elif j.state == "running":
                cells.append(f"{j.label} {j.done}/{j.total}" if j.total else f"{j.label} starting")
            else:
                cells.append(f"{j.label} waiting")
        m, s = divmod(int(time.time() - self.t0), 60)
        return f"  [{m:02d}:{s:02d}] " + " | ".join(cells)

    def _clear(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False

    def event(self, text: str) -> None:
        self._clear()
        self.log(text)
        self.refresh()

    def refresh(self) -> None:
        if self.mode == "live":
            width = shutil.get_terminal_size((100, 20)).columns - 1
            self.stream.write("\r" + self.line()[:width] + "\x1b[K")
            self.stream.flush()
            self.shown = True
        elif self.mode == "lines":
            done = sum(j.done for j in self.jobs)
            total = sum(j.total for j in self.jobs)
            if total and all(j.total for j in self.jobs) and done * 10 >= self.next_tenth * total:
                self.next_tenth = done * 10 // total + 1
                self.log(f"{self.line()}  ({100 * done // total} %)")

    def close(self) -> None:
        self._clear()


def _stop(running: dict[str, tuple[subprocess.Popen, float, object]], grace_s: float = 10.0) -> None:
    for proc, _, _ in running.values():
        if proc.poll() is None:
            proc.terminate()
    deadline = time.time() + grace_s
    for proc, _, fh in running.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        fh.close()  # type: ignore[attr-defined]
    running.clear()


def run_jobs(
    jobs: list[Job],
    slots: int,
    *,
    progress: bool = True,
    log: Callable[[str], object] = print,
    stream: TextIO | None = None,
    refresh_s: float = 1.0,
    poll_s: float = 0.2,
) -> dict[str, float]:
    """Run ``jobs`` (in this order, ``slots`` at once); returns the wall time of each by name. The
    display goes to ``stream`` (default stderr): in place when it is a terminal and ``progress``, a
    plain line per 10 % of the total when it is not, only the start and end of each job without
    ``progress``. A failed job raises :class:`JobFailed` once the other children are stopped."""
    stream = sys.stderr if stream is None else stream
    live = progress and hasattr(stream, "isatty") and stream.isatty()
    display = _Display(jobs, "live" if live else ("lines" if progress else "none"), log, stream)
    pending, running = list(jobs), {}
    by_name = {j.name: j for j in jobs}
    walls: dict[str, float] = {}
    last_refresh = 0.0
    try:
        while pending or running:
            while pending and len(running) < max(1, slots):
                job = pending.pop(0)
                job.log.parent.mkdir(parents=True, exist_ok=True)
                fh = job.log.open("w")
                sys.stdout.flush()
                proc = subprocess.Popen(
                    job.argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=job.env
                )
                running[job.name] = (proc, time.time(), fh)
                job.state = "running"
                display.event(f"  started {job.label} (log: {job.log})")
            for name, (proc, t0, fh) in list(running.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                fh.close()
                del running[name]
                job = by_name[name]
                job.wall_s = walls[name] = time.time() - t0
                if rc != 0:
                    raise JobFailed(job, rc)
                job.done, job.total = job.progress()
                job.done = job.total  # finished: whatever the last log record said
                job.state = "done"
                display.event(f"  finished {job.label} in {job.wall_s:.0f} s")
            if time.time() - last_refresh >= refresh_s:
                for job in jobs:
                    if job.state == "running":
                        job.done, job.total = job.progress()
                display.refresh()
                last_refresh = time.time()
            if pending or running:
                time.sleep(poll_s)
        display.refresh()  # the final state (every job done: 100 %)
    finally:
        display.close()
        _stop(running)
    return walls


def child_env() -> dict[str, str]:
    """The environment of a child: this one, with the directories ``mona`` and ``mona_ext`` were
    imported from first on ``PYTHONPATH`` (so that a child runs this code, installed or not)."""
    import importlib.util

    paths = [str(Path(__file__).resolve().parent.parent)]
    spec = importlib.util.find_spec("mona_ext")
    if spec is not None and spec.origin:
        paths.append(str(Path(spec.origin).resolve().parent.parent))
    env = dict(os.environ)
    old = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths + old))
    return env


def train_job(
    name: str, label: str, config: str, overrides: list[str], stages: list[tuple[str, int]], work: Path
) -> Job:
    """A :class:`Job` training ``config`` + ``overrides`` (``mona.train.run_stages``, no progress bar):
    spec, log and result in ``work/<name>.{json,log,result.json}``; ``stages``: (out_dir, iterations)
    of each stage, for the progress display."""
    work.mkdir(parents=True, exist_ok=True)
    progress = StageProgress(stages)
    spec = work / f"{name}.json"
    result = work / f"{name}.result.json"
    result.unlink(missing_ok=True)
    spec.write_text(json.dumps({"config": config, "overrides": overrides, "result": str(result)}, indent=1))
    return Job(
        name,
        label,
        [sys.executable, "-m", "mona.runs", str(spec)],
        work / f"{name}.log",
        progress,
        child_env(),
        progress.total,
    )


def read_result(job: Job) -> dict:
    """What the child of :func:`train_job` wrote to its result file."""
    return json.loads((job.log.parent / f"{job.name}.result.json").read_text())


def failure(job: Job, err: JobFailed) -> Exception:
    """The error a failed :func:`train_job` stands for: the child's own (a :class:`UsageError` stays one,
    a :class:`DataError` too), naming the run and its log."""
    from .errors import DataError

    try:
        res = read_result(job)
    except (OSError, ValueError):
        res = {}
    if "error" in res:
        text = f"demo: the {job.name} run failed: {res['error']}: {res['message']} (log: {job.log})"
        cls = {"usage": UsageError, "data": DataError}.get(res.get("kind"), RuntimeError)
        return cls(text)
    tail = log_tail(job.log, 5)
    return RuntimeError(
        f"demo: the {job.name} run {err.how} (log: {job.log})" + (f"; its log ends:\n{tail}" if tail else "")
    )


def _exit_with_parent(every_s: float = 1.0) -> None:
    """A child whose parent dies (killed, so unable to stop it) exits too, within ``every_s``."""
    import threading

    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(every_s)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="mona-parent-watch").start()


def _child(spec_path: str) -> int:
    """``python -m mona.runs SPEC.json``: train the spec's config, write its result file."""
    import logging

    from .data.prepare import atomic_write_json
    from .errors import DataError

    spec = json.loads(Path(spec_path).read_text())
    logging.basicConfig(level=logging.INFO, format="mona: %(message)s")
    _exit_with_parent()
    try:
        from .train import load_config, run_stages

        cfg = load_config(spec["config"], spec["overrides"])
        t0 = time.time()
        res = run_stages(cfg, progress=False)[-1]
    except Exception as err:
        kind = "usage" if isinstance(err, UsageError) else "data" if isinstance(err, DataError) else "other"
        atomic_write_json(Path(spec["result"]), {"error": type(err).__name__, "kind": kind, "message": str(err)})
        raise
    atomic_write_json(
        Path(spec["result"]),
        {
            "best_model": res.best_model,
            "best_iteration": res.best_iteration,
            "best_dice": res.best_dice,
            "iteration": res.iteration,
            "train_s": time.time() - t0,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
