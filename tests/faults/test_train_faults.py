"""Write errors, non-finite losses, locks and changed configs, each through the real CLI.

* disk full (``OSError(ENOSPC)`` injected into a checkpoint, a log, config.yaml, a cache volume), a
  real kernel write error (``RLIMIT_FSIZE``: ``EFBIG`` beyond 1 MB), a read-only output directory:
  exit code 1, one line naming the path and the problem, no temporary file left, the previous
  checkpoint intact (a ``--resume`` from it gives the uninterrupted run's weights bit for bit);
* NaN / inf in one loss term or a gradient: the step is skipped (no optimiser, EMA, bank or queue
  update), counted in ``skipped_steps``; ``max_nonfinite_steps`` in a row stop the run with a message
  naming the term(s) and the iteration, the last good checkpoint intact;
* a second ``mona train`` / ``mona prepare`` into a locked directory fails at once naming the owner's
  pid; a stale lock (its process dead) is taken over;
* ``--resume`` with a changed config is refused with the changed keys, unless ``--resume-override``.
"""

from __future__ import annotations

import os
import resource
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from faultlib import METHOD_ARGS, compare_runs, env, last_error_line, load, mona, read_csv, same, start

from mona.lockfile import LOCK_NAME, locked
from mona.train.checkpoint import load_checkpoint

SUP = [
    "train",
    *METHOD_ARGS["supervised"],
    "iterations=6",
    "val_every=100",
    "log_every=1",
    "checkpoint_every=2",
    "--no-progress",
]


def _tmp_left(d: Path) -> list[str]:
    return sorted(p.name for p in d.rglob("*") if p.name.endswith(".tmp"))


@pytest.fixture(scope="module")
def sup_ref(fault_cache, tmp_path_factory) -> Path:
    """An uninterrupted supervised run of SUP."""
    out = tmp_path_factory.mktemp("sup_ref") / "run"
    r = mona(*SUP, f"data.cache={fault_cache}", f"out_dir={out}")
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.parametrize(
    "point, file, action",
    [
        ("checkpoint.mid_write@4", "last.pt", "enospc"),  # 4th checkpoint write (best.pt 6 was 3rd), half written
        ("checkpoint.before_rename@2", "last.pt", "enospc"),  # the 2nd (iteration 4), complete but not renamed
        ("log.append@5", "metrics.jsonl", "enospc"),
        ("config.write@1", "config.yaml", "eio"),
    ],
)
def test_write_error_names_the_file_and_keeps_the_previous_checkpoint(
    point, file, action, fault_cache, sup_ref, tmp_path, fault_report
):
    out = tmp_path / "run"
    r = mona(*SUP, f"data.cache={fault_cache}", f"out_dir={out}", fault=f"{point}:{action}")
    assert r.returncode == 1, r.stderr
    what = "No space left on device" if action == "enospc" else "Input/output error"
    tag = point.split("@")[0]
    msg = f"mona train: error: {out / file}: cannot write ({what} (injected at {tag}))"
    assert last_error_line(r.stderr) == msg
    assert "Traceback" not in r.stderr
    assert _tmp_left(out) == [] and not (out / LOCK_NAME).exists()
    if (out / "last.pt").exists():  # the previous checkpoint is intact: resuming from it gives the reference
        before = load_checkpoint(out / "last.pt")["iteration"]
        r2 = mona(*SUP, f"data.cache={fault_cache}", f"out_dir={out}", "--resume")
        assert r2.returncode == 0, r2.stderr
        assert compare_runs(sup_ref, out, "supervised") == []
    else:
        before = None
    fault_report(
        "write_errors",
        {
            "fault": f"{point}:{action}",
            "exit": r.returncode,
            "message": msg,
            "previous_checkpoint": before,
            "resumed_identical": before is not None,
        },
    )


def test_a_real_write_error_file_size_limit(fault_cache, tmp_path, fault_report):
    """RLIMIT_FSIZE 1 MB: the kernel refuses the checkpoint's bytes (EFBIG; Python ignores SIGXFSZ)."""
    out = tmp_path / "run"
    limit = 1 << 20

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    r = subprocess.run(
        [sys.executable, "-m", "mona", *SUP, f"data.cache={fault_cache}", f"out_dir={out}"],
        env=env(),
        capture_output=True,
        text=True,
        preexec_fn=small_files,
    )
    msg = f"mona train: error: {out / 'last.pt'}: cannot write (File too large)"
    assert r.returncode == 1 and last_error_line(r.stderr) == msg, r.stderr
    assert not (out / "last.pt").exists() and _tmp_left(out) == []
    fault_report(
        "write_errors",
        {
            "fault": "RLIMIT_FSIZE 1 MB (real EFBIG)",
            "exit": 1,
            "message": msg,
            "previous_checkpoint": None,
            "resumed_identical": False,
        },
    )


def test_disk_full_in_prepare_names_the_file_and_a_rerun_completes(fault_raw, fault_cache, tmp_path, fault_report):
    out = tmp_path / "cache"
    r = mona("prepare", "acdc", fault_raw, out, "--size", "32", "--no-progress", fault="prepare.write@5:enospc")
    assert r.returncode == 1
    line = last_error_line(r.stderr)
    assert line.startswith(f"mona prepare: error: {out / 'volumes'}/patient") and line.endswith(
        ": cannot write (No space left on device (injected at prepare.write))"
    ), line
    assert _tmp_left(out) == [] and not (out / "manifest.json").exists() and not (out / LOCK_NAME).exists()
    r = mona("prepare", "acdc", fault_raw, out, "--size", "32", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert (out / "manifest.json").read_text() == (fault_cache / "manifest.json").read_text()
    fault_report(
        "write_errors",
        {
            "fault": "prepare.write@5:enospc",
            "exit": 1,
            "message": line,
            "previous_checkpoint": None,
            "resumed_identical": False,
        },
    )


@pytest.fixture
def readonly(tmp_path):
    """A command prefix under which a 0555 directory really is read-only: root may write anywhere
    (CAP_DAC_OVERRIDE), so as root the command runs with that capability (and its relatives) dropped
    from the bounding set by ``setpriv``; any other user needs no prefix."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot make a directory read-only for the command")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search,-fowner"]


def test_read_only_output_directory(fault_raw, fault_cache, readonly, tmp_path, fault_report):
    out = tmp_path / "run"
    out.mkdir()
    out.chmod(0o555)
    try:
        r = subprocess.run(
            [*readonly, sys.executable, "-m", "mona", *SUP, f"data.cache={fault_cache}", f"out_dir={out}"],
            env=env(),
            capture_output=True,
            text=True,
        )
        msg = (
            f"mona train: error: {out}: the directory is not writable (creating its lock file {LOCK_NAME}: "
            f"Permission denied)"
        )
        assert r.returncode == 1 and last_error_line(r.stderr) == msg, r.stderr
        assert list(out.iterdir()) == []
        r = subprocess.run(
            [
                *readonly,
                sys.executable,
                "-m",
                "mona",
                "prepare",
                "acdc",
                str(fault_raw),
                str(out / "c"),
                "--size",
                "32",
                "--no-progress",
            ],
            env=env(),
            capture_output=True,
            text=True,
        )
        msg2 = f"mona prepare: error: {out / 'c'}: cannot create the directory (Permission denied)"
        assert r.returncode == 1 and last_error_line(r.stderr) == msg2, r.stderr
    finally:
        out.chmod(0o755)
    fault_report(
        "write_errors",
        {
            "fault": "read-only out_dir (0555)",
            "exit": 1,
            "message": msg,
            "previous_checkpoint": None,
            "resumed_identical": False,
        },
    )
    fault_report(
        "write_errors",
        {
            "fault": "prepare into a read-only directory",
            "exit": 1,
            "message": msg2,
            "previous_checkpoint": None,
            "resumed_identical": False,
        },
    )


# ----------------------------------------------------------------------------------------- non-finite


def test_nonfinite_steps_are_skipped_without_touching_the_state(fault_cache, tmp_path, fault_report):
    """mona (teacher, bank, queue): NaN in L_unsup at steps 3-4; the state after step 4 equals the
    state after step 2 in every learned object (student, teacher, optimiser, bank, queue)."""
    base = [
        "train",
        *METHOD_ARGS["mona"],
        "pretrain_iterations=0",
        f"data.cache={fault_cache}",
        "iterations=8",
        "val_every=100",
        "log_every=1",
        "checkpoint_every=1",
        "--no-progress",
    ]
    states = {}
    for stop in (3, 5):  # killed right after step 2 / step 4: last.pt holds iteration 2 / 4
        out = tmp_path / f"stop{stop}"
        r = mona(*base, f"out_dir={out}", fault=f"loss.unsup@3-4:nan,train.after_step@{stop}:kill")
        assert r.returncode == -9, r.stderr
        states[stop] = load(out / "last.pt")
    a, b = states[3], states[5]
    assert a["iteration"] == 2 and b["iteration"] == 4
    for name in ("student", "teacher", "bank", "queue.knn"):
        assert same(a["objects"][name], b["objects"][name]) == [], name
    # the momentum buffers (the learning rate in param_groups follows the schedule, which advances)
    assert same(a["objects"]["optimizer"]["state"], b["objects"]["optimizer"]["state"]) == []
    assert a["nonfinite"] == {"skipped": 0, "consecutive": 0, "first": 0, "what": []}
    assert b["nonfinite"] == {"skipped": 2, "consecutive": 2, "first": 3, "what": ["unsup"]}
    # the full run: finishes, logs the skipped steps, warns once per skipped step
    out = tmp_path / "full"
    r = mona(*base, f"out_dir={out}", fault="loss.unsup@3-4:nan")
    assert r.returncode == 0, r.stderr
    rows = read_csv(out / "train_log.csv")
    assert [int(x["skipped_steps"]) for x in rows] == [0, 0, 1, 2, 2, 2, 2, 2]
    assert [x["unsup"] for x in rows][2:4] == ["nan", "nan"]
    warn = [l for l in r.stderr.splitlines() if "step skipped" in l]
    assert warn == [
        "mona: iteration 3: non-finite unsup: step skipped (1 in a row, 1 in this run)",
        "mona: iteration 4: non-finite unsup: step skipped (2 in a row, 2 in this run)",
    ]
    fault_report(
        "nonfinite",
        {"fault": "loss.unsup@3-4:nan (mona)", "exit": 0, "skipped": 2, "state_unchanged": True, "message": warn[0]},
    )


@pytest.mark.parametrize("fault, what", [("loss.ce@4+:nan", "ce"), ("loss.dice_loss@4+:inf", "dice_loss")])
def test_consecutive_nonfinite_steps_stop_the_run(fault, what, fault_cache, tmp_path, fault_report):
    out = tmp_path / "run"
    r = mona(
        "train",
        *METHOD_ARGS["supervised"],
        f"data.cache={fault_cache}",
        f"out_dir={out}",
        "iterations=20",
        "val_every=100",
        "log_every=5",
        "checkpoint_every=2",
        "max_nonfinite_steps=3",
        "--no-progress",
        fault=fault,
    )
    msg = (
        f"mona train: error: training stopped at iteration 6: 3 consecutive steps (iterations 4-6) had a "
        f"non-finite {what} (max_nonfinite_steps=3); the last good checkpoint {out / 'last.pt'} (iteration 4) "
        f"is intact; lower optim.lr or check the data, then resume (--resume-override optim.lr)"
    )
    assert r.returncode == 1 and last_error_line(r.stderr) == msg, r.stderr
    assert load_checkpoint(out / "last.pt")["iteration"] == 4
    rows = read_csv(out / "train_log.csv")
    assert [(x["iteration"], x["skipped_steps"]) for x in rows] == [("5", "2"), ("6", "3")]
    fault_report(
        "nonfinite",
        {"fault": fault + " (max_nonfinite_steps=3)", "exit": 1, "skipped": 3, "state_unchanged": True, "message": msg},
    )


def test_a_nonfinite_gradient_is_skipped(fault_cache, tmp_path, fault_report):
    out = tmp_path / "run"
    r = mona(*SUP, f"data.cache={fault_cache}", f"out_dir={out}", fault="grad@2:nan")
    assert r.returncode == 0, r.stderr
    warn = [l for l in r.stderr.splitlines() if "step skipped" in l]
    assert len(warn) == 1 and warn[0].startswith("mona: iteration 2: non-finite gradient of unet.")
    assert [int(x["skipped_steps"]) for x in read_csv(out / "train_log.csv")] == [0, 1, 1, 1, 1, 1]
    assert all(
        torch.isfinite(v).all()
        for v in load_checkpoint(out / "last.pt")["objects"]["student"].values()
        if v.is_floating_point()
    )
    fault_report(
        "nonfinite", {"fault": "grad@2:nan", "exit": 0, "skipped": 1, "state_unchanged": True, "message": warn[0]}
    )


# ---------------------------------------------------------------------------------------------- locks


def test_a_second_train_into_a_running_runs_directory_fails_fast(fault_cache, tmp_path, fault_report):
    out = tmp_path / "run"
    first = start(*SUP, "iterations=100000", f"data.cache={fault_cache}", f"out_dir={out}")
    assert first.stderr is not None
    for line in first.stderr:  # set up: the lock is held
        if "device cpu" in line:
            break
    r = mona(*SUP, f"data.cache={fault_cache}", f"out_dir={out}", "--resume")
    msg = (
        f"mona train: error: {out}: in use by another mona train (pid {first.pid} on {socket.gethostname()}, "
        f"lock file {out / LOCK_NAME}); wait for it to finish or choose another directory"
    )
    assert r.returncode == 1 and last_error_line(r.stderr) == msg, r.stderr
    first.kill()  # SIGKILL: the lock file stays, its process is gone
    first.wait()
    assert (out / LOCK_NAME).read_text().strip() == f"pid {first.pid} on {socket.gethostname()}"
    r = mona(*SUP, f"data.cache={fault_cache}", f"out_dir={out}", "iterations=4", "--resume")
    assert r.returncode == 0, r.stderr
    assert (
        f"mona: {out}: taking over a stale lock (pid {first.pid} on {socket.gethostname()}, no longer running)"
        in r.stderr.splitlines()
    )
    assert not (out / LOCK_NAME).exists()
    fault_report("locks", {"case": "second mona train into a running run's out_dir", "exit": 1, "message": msg})
    fault_report(
        "locks",
        {
            "case": "stale lock (owner killed with SIGKILL)",
            "exit": 0,
            "message": f"mona: {out}: taking over a stale lock (pid {first.pid} on ..., no longer running)",
        },
    )


def test_a_second_prepare_into_a_locked_cache_fails_fast(fault_raw, tmp_path, fault_report):
    out = tmp_path / "cache"
    out.mkdir()
    with locked(out, "mona prepare"):  # this test process is the first `mona prepare`
        r = mona("prepare", "acdc", fault_raw, out, "--size", "32", "--no-progress")
    msg = (
        f"mona prepare: error: {out}: in use by another mona prepare (pid {os.getpid()} on "
        f"{socket.gethostname()}, lock file {out / LOCK_NAME}); wait for it to finish or choose another directory"
    )
    assert r.returncode == 1 and last_error_line(r.stderr) == msg, r.stderr
    assert not (out / "manifest.json").exists()
    (out / LOCK_NAME).write_text("pid 999999999 on elsewhere\n")  # a lock file nobody holds
    r = mona("prepare", "acdc", fault_raw, out, "--size", "32", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "taking over a stale lock (pid 999999999 on elsewhere, no longer running)" in r.stderr
    fault_report("locks", {"case": "second mona prepare into a locked cache", "exit": 1, "message": msg})


# ------------------------------------------------------------------------------------- changed config


def test_resume_with_a_changed_config_is_refused_unless_overridden(fault_cache, tmp_path, fault_report):
    out = tmp_path / "run"
    base = [*SUP, f"data.cache={fault_cache}", f"out_dir={out}"]
    r = mona(*base, fault="train.after_step@3:kill")
    assert r.returncode == -9
    # `--resume KEY=VALUE`: the value is an override, not a checkpoint path
    r = mona(*base, "--resume", "optim.lr=0.02", "dice_weight=0.7")
    msg = (
        f"mona train: error: --resume {out / 'last.pt'}: the config differs from the checkpoint's: dice_weight: "
        f"0.5 -> 0.7; optim.lr: 0.05 -> 0.02; resume with the checkpoint's values, or accept the change with "
        f"--resume-override dice_weight,optim.lr"
    )
    assert r.returncode == 2 and last_error_line(r.stderr) == msg, r.stderr
    fault_report("resume_config", {"case": "changed optim.lr, dice_weight", "exit": 2, "message": msg})
    r = mona(*base, "--resume", "model.embed_dim=16", "--resume-override", "model.embed_dim")
    msg2 = (
        f"mona train: error: --resume-override model.embed_dim: the method and model.* cannot change on resume "
        f"(the checkpoint's weights would not fit); start a new run with init_from={out / 'last.pt'}"
    )
    assert r.returncode == 2 and last_error_line(r.stderr) == msg2, r.stderr
    r = mona(*base, "--resume", "--resume-override", "optim.lrr")
    assert r.returncode == 2 and last_error_line(r.stderr) == (
        "mona train: error: --resume-override: unknown config key(s) ['optim.lrr']"
    )
    # the length of the run and the intervals may change freely; listed keys are accepted
    r = mona(*base, "iterations=7", "log_every=2", "--resume", "optim.lr=0.02", "--resume-override", "optim.lr")
    assert r.returncode == 0, r.stderr
    assert "mona: resume: optim.lr changed from 0.05 to 0.02 (--resume-override)" in r.stderr.splitlines()
    assert load_checkpoint(out / "last.pt")["config"]["optim"]["lr"] == 0.02
    its = [int(x["iteration"]) for x in read_csv(out / "train_log.csv")]
    assert its == [1, 2, 4, 6, 7]
    fault_report(
        "resume_config",
        {
            "case": "the same with --resume-override optim.lr",
            "exit": 0,
            "message": "mona: resume: optim.lr changed from 0.05 to 0.02 (--resume-override)",
        },
    )
