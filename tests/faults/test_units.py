"""The building blocks in-process: MONA_FAULT parsing, atomic writes, stale temporary files, the lock."""

from __future__ import annotations

import errno
import os

import pytest

from mona import faults
from mona.atomicio import atomic_write, atomic_write_text, remove_stale_temps
from mona.lockfile import LOCK_NAME, locked


def test_fault_spec_parsing():
    f = faults.parse("checkpoint.mid_write@3:enospc, train.after_step@2+ ,loss.ce@4-6:nan,grad")
    assert f["checkpoint.mid_write"] == faults.Fault("checkpoint.mid_write", 3, 3, "enospc")
    assert f["train.after_step"] == faults.Fault("train.after_step", 2, None, "kill")
    assert f["loss.ce"] == faults.Fault("loss.ce", 4, 6, "nan")
    assert f["grad"] == faults.Fault("grad", 1, None, "kill")
    assert faults.parse("") == {}
    for bad in ("x@", "x:explode", "@3", "x@3-"):
        with pytest.raises(ValueError, match=f"cannot parse {bad!r}"):
            faults.parse(bad)


def test_fault_hits_are_counted_per_point(monkeypatch):
    monkeypatch.setenv("MONA_FAULT", "loss.ce@2-3:nan,p@2:eio")
    faults.reload()
    try:
        got = [faults.poison("loss.ce") for _ in range(4)]  # arrivals 2 and 3 fire
        assert [g is None for g in got] == [True, False, False, True] and all(g != g for g in got[1:3])
        faults.point("p", "/x")  # 1st arrival: nothing
        with pytest.raises(OSError) as e:
            faults.point("p", "/x")
        assert e.value.errno == errno.EIO and e.value.filename == "/x"
        faults.point("p", "/x")  # 3rd: nothing
    finally:
        monkeypatch.delenv("MONA_FAULT")
        faults.reload()
    assert not faults.active()


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "f.bin"
    atomic_write_text(target, "old")

    def failing(fh):
        fh.write(b"x" * 5000)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_write(target, failing)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_atomic_write_reraises_a_swallowed_oserror_naming_the_file(tmp_path, monkeypatch):
    """A writer that turns the OSError of write() into something else (as torch.save does): the
    original error kind (errno) comes back, naming the target file."""

    class Full:
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    target = tmp_path / "ck.pt"

    def writer(fh):
        try:
            fh.write(b"y" * 10)
        except OSError:
            raise RuntimeError("unexpected pos 64 vs 0") from None

    real_open = os.fdopen

    def fake_fdopen(fd, mode):
        fh = real_open(fd, mode)
        fh.write = Full().write  # type: ignore[method-assign]
        return fh

    monkeypatch.setattr(os, "fdopen", fake_fdopen)
    with pytest.raises(OSError) as e:
        atomic_write(target, writer)
    monkeypatch.undo()
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(target)
    assert e.value.strerror == "cannot write (No space left on device)"
    assert list(tmp_path.iterdir()) == []


def test_remove_stale_temps_removes_only_temporary_files(tmp_path):
    for name in (".last.pt.abc123.tmp", ".x.tmp", "keep.tmp", "last.pt", ".hidden"):
        (tmp_path / name).write_text("x")
    removed = sorted(p.name for p in remove_stale_temps(tmp_path))
    assert removed == [".last.pt.abc123.tmp", ".x.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", "keep.tmp", "last.pt"]


def test_the_lock_is_reentrant_and_records_the_owner(tmp_path):
    d = tmp_path / "run"
    with locked(d, "mona train") as path:
        assert path == d / LOCK_NAME and path.read_text().startswith(f"pid {os.getpid()} on ")
        with locked(d, "mona train"):  # the pipeline and its stage in one process
            assert path.exists()
        assert path.exists()  # still held by the outer block
    assert not d.exists()  # created by the lock, empty at the end: removed again
