"""``mona demo --jobs``: the methods train in child processes, several at once, with one progress display;
the results are those of training them one after another in this process."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mona.cli import main
from mona.demo import compare, schedule
from mona.errors import DataError, UsageError
from mona.runs import Job, JobFailed, StageProgress, default_jobs, run_jobs

TINY = {
    "iterations": 6,
    "pretrain_iterations": 2,
    "n_train": 3,
    "n_val": 1,
    "n_test": 1,
    "size": 32,
    "device": "cpu",
    "progress": False,
    "overlays": 0,
    "overrides": ["val_every=3", "checkpoint_every=3", "log_every=1"],
}


def _losses(run: Path) -> list[str]:
    rows = (run / "train_log.csv").read_text().splitlines()
    col = rows[0].split(",").index("loss")
    return [r.split(",")[col] for r in rows[1:]]


def test_two_jobs_train_the_same_weights_as_one_after_another(tmp_path):
    methods = "supervised,supervised_strong,mona"  # 3 runs on 2 slots: one waits for a free one
    seq = compare(tmp_path / "seq", methods=methods, jobs=1, log=lambda *a: None, **TINY)
    lines: list[str] = []
    par = compare(tmp_path / "par", methods=methods, jobs=2, log=lines.append, **TINY)
    assert seq["jobs"] == 1 and par["jobs"] == 2
    for m in ("supervised", "supervised_strong", "mona"):
        assert par[m]["dice"] == seq[m]["dice"]
        assert json.dumps(par[m]["per_class"], sort_keys=True) == json.dumps(seq[m]["per_class"], sort_keys=True)
        for key in ("best_iteration", "best_val_dice", "model"):
            assert par[m][key] == seq[m][key], (m, key)
        a = torch.load(tmp_path / "seq" / m / "model.pt", weights_only=False)["unet"]
        b = torch.load(tmp_path / "par" / m / "model.pt", weights_only=False)["unet"]
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), m
        assert _losses(tmp_path / "par" / m) == _losses(tmp_path / "seq" / m)
        assert par["timings_s"][f"train_{m}_s"] > 0
    assert _losses(tmp_path / "par" / "mona" / "pretrain_glcon") == _losses(
        tmp_path / "seq" / "mona" / "pretrain_glcon"
    )
    assert par["timings_s"]["train_s"] > 0 and par["timings_s"]["total_s"] >= par["timings_s"]["train_s"]
    on_disk = json.loads((tmp_path / "par" / "report" / "summary.json").read_text())
    assert on_disk["jobs"] == 2 and on_disk["timings_s"] == pytest.approx(par["timings_s"])
    text = "\n".join(lines)
    # the longest run (two stages) starts first; each child's log is kept
    assert "the longest first (MONA, sup, strong)" in text
    assert text.index("started MONA") < text.index("started sup") < text.index("started strong")
    assert "finished MONA" in text and "2 runs at once" in text
    assert (tmp_path / "par" / "logs" / "mona.log").exists()


def test_a_failing_run_fails_the_demo_with_its_error_and_method(tmp_path, monkeypatch):
    # GLCon's global term (MONA's stage 1 only) becomes NaN: that run stops at its first step
    monkeypatch.setenv("MONA_FAULT", "loss.global:nan")
    args = {**TINY, "overrides": TINY["overrides"] + ["max_nonfinite_steps=1"]}
    with pytest.raises(
        DataError, match=r"the mona run failed: TrainingStopped: training stopped at iteration 1.*global"
    ):
        compare(tmp_path / "d", methods="supervised,mona", jobs=2, log=lambda *a: None, **args)
    assert not (tmp_path / "d" / "report" / "summary.json").exists()
    assert "Traceback" in (tmp_path / "d" / "logs" / "mona.log").read_text()


def _pid_job(tmp_path: Path, name: str) -> tuple[Job, Path]:
    pid = tmp_path / f"{name}.pid"
    code = f"import os, time; open({str(pid)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    return Job(name, name, [sys.executable, "-c", code], tmp_path / f"{name}.log"), pid


def _gone(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")


def test_a_failing_job_stops_the_others(tmp_path):
    sleeper, pid = _pid_job(tmp_path, "sleeper")
    # fails once the sleeper runs, with an error on stderr (kept in its log)
    code = f"import os, sys, time\nwhile not os.path.exists({str(pid)!r}): time.sleep(0.05)\nsys.exit('boom')"
    failing = Job("failing", "failing", [sys.executable, "-c", code], tmp_path / "failing.log")
    with pytest.raises(JobFailed, match=r"failing exited with code 1") as err:
        run_jobs([sleeper, failing], 2, progress=False, log=lambda *a: None, poll_s=0.05)
    assert err.value.job is failing and "boom" in failing.log.read_text()
    assert _gone(int(pid.read_text()))


def test_ctrl_c_stops_every_child(tmp_path):
    a, pid_a = _pid_job(tmp_path, "a")
    b, pid_b = _pid_job(tmp_path, "b")

    def interrupt():  # Ctrl-C while both run
        if pid_a.exists() and pid_b.exists():
            raise KeyboardInterrupt
        return 0, 10

    a.progress = interrupt
    with pytest.raises(KeyboardInterrupt):
        run_jobs([a, b], 2, progress=False, log=lambda *a: None, refresh_s=0.05, poll_s=0.05)
    assert _gone(int(pid_a.read_text())) and _gone(int(pid_b.read_text()))


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _counting_job(tmp_path: Path, name: str, total: int = 20) -> Job:
    """A job whose progress advances by one at every poll and which ends when it reaches ``total``."""
    flag = tmp_path / f"{name}.stop"
    code = f"import os, time\nwhile not os.path.exists({str(flag)!r}): time.sleep(0.02)"
    job = Job(name, name, [sys.executable, "-c", code], tmp_path / f"{name}.log", total=total)
    count = iter(range(1, 10**6))

    def progress():
        n = min(next(count), total)
        if n == total:
            flag.touch()
        return n, total

    job.progress = progress
    return job


def test_one_status_line_in_place_on_a_terminal(tmp_path):
    stream, lines = _Tty(), []
    jobs = [_counting_job(tmp_path, "one"), _counting_job(tmp_path, "two")]
    run_jobs(jobs, 2, progress=True, log=lines.append, stream=stream, refresh_s=0, poll_s=0.01)
    shown = stream.getvalue()
    assert "\n" not in shown and shown.count("\r") > 4  # redrawn in place, never a new line
    assert "one " in shown and " | two " in shown and "/20" in shown
    assert shown.endswith("\r\x1b[K")  # cleared at the end
    assert [l.split()[0] for l in lines] == ["started", "started", "finished", "finished"]


def test_a_plain_line_every_ten_percent_when_not_a_terminal(tmp_path):
    stream, lines = io.StringIO(), []
    jobs = [_counting_job(tmp_path, name, 40) for name in ("one", "two", "three")]  # "three" waits for a slot
    run_jobs(jobs, 2, progress=True, log=lines.append, stream=stream, refresh_s=0, poll_s=0.01)
    assert stream.getvalue() == ""
    status = [l for l in lines if l.endswith("%)")]
    pct = [int(l.rsplit("(", 1)[1].split()[0]) for l in status]
    assert 5 <= len(pct) <= 11 and pct == sorted(set(pct)) and pct[-1] == 100
    assert "three waiting" in status[0]
    assert "three 40/40" in status[-1] or "three done" in status[-1]
    assert all("one" in l and "two" in l for l in status)


def test_stage_progress_reads_the_stages_logs_and_ignores_stale_ones(tmp_path):
    s1, s2 = tmp_path / "run" / "pretrain", tmp_path / "run"
    s1.mkdir(parents=True)
    (s2 / "metrics.jsonl").write_text(json.dumps({"kind": "train", "iteration": 30}) + "\n")  # an earlier run's
    os.utime(s2 / "metrics.jsonl", (0, 0))
    prog = StageProgress([(s1, 10), (s2, 30)])
    assert prog() == (0, 40)
    with (s1 / "metrics.jsonl").open("a") as fh:
        fh.write(json.dumps({"kind": "train", "iteration": 4}) + "\n" + '{"kind": "val", "iteration": 4')
    assert prog() == (4, 40)  # the half-written last line waits
    with (s1 / "metrics.jsonl").open("a") as fh:
        fh.write(', "mean_dice": 0.1}\n' + json.dumps({"kind": "train", "iteration": 10}) + "\n")
    assert prog() == (10, 40)  # stage 2 has not rewritten its log yet: its stale 30 is not counted
    (s2 / "metrics.jsonl").unlink()
    (s2 / "metrics.jsonl").write_text(json.dumps({"kind": "train", "iteration": 5}) + "\n")
    assert prog() == (15, 40)


def test_default_jobs_one_per_core_on_a_cpu_one_on_a_gpu(monkeypatch):
    assert default_jobs(3, "cpu", cores=2) == 2
    assert default_jobs(3, "cpu", cores=16) == 3
    assert default_jobs(3, "cpu", cores=1) == 1
    assert default_jobs(1, "cpu", cores=8) == 1
    assert default_jobs(3, "cuda", cores=16) == 1
    assert default_jobs(3, "cuda:1", cores=16) == 1
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert default_jobs(6, "cpu") == 4


def test_the_longest_runs_start_first():
    def cfg(method, pre=0):
        return SimpleNamespace(method=method, pretrain_iterations=pre)

    cfgs = {
        "supervised": cfg("supervised"),
        "supervised_strong": cfg("supervised_strong"),
        "mean_teacher": cfg("mean_teacher"),
        "mona": cfg("mona", 100),
        "bcp": cfg("bcp", 100),
    }
    order = schedule(("supervised", "supervised_strong", "mean_teacher", "mona", "bcp"), cfgs)
    assert order == ["mona", "bcp", "mean_teacher", "supervised", "supervised_strong"]


@pytest.mark.parametrize("jobs", [0, -1])
def test_jobs_must_be_at_least_one(tmp_path, jobs, capsys):
    with pytest.raises(UsageError, match=r"--jobs .* must be an integer >= 1"):
        compare(tmp_path / "d", jobs=jobs, log=lambda *a: None, **TINY)
    assert main(["demo", "--out", str(tmp_path / "d"), "--jobs", str(jobs), "--no-progress"]) == 2
    assert "--jobs" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
