"""Atomic file writes: a file is either its previous complete version or its new complete version.

:func:`atomic_write` writes to a temporary file in the target's directory (``.NAME.XXXX.tmp``),
flushes and ``fsync``\\ s it, moves it into place with ``os.replace`` (atomic on POSIX), then fsyncs the
directory so the rename survives a power cut. If anything fails (a full disk, a read-only directory,
an exception in the writer) the temporary file is removed and an ``OSError`` naming the target path is
raised; the previous version of the target is untouched. A process killed mid-write leaves at most a
temporary file, which :func:`remove_stale_temps` deletes on the next run (under the directory's lock).
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import IO, Callable

from . import faults

TMP_SUFFIX = ".tmp"


class _File:
    """The temporary file as the writer sees it. Remembers an ``OSError`` of ``write`` (writers such as
    ``torch.save`` turn it into a RuntimeError without the errno; :func:`atomic_write` re-raises the
    original, naming the file). While ``MONA_FAULT`` is set, ``TAG.mid_write`` fires after the first
    write of at least 1 KiB, i.e. with part of the bytes on disk (a kill there leaves a partial file)."""

    def __init__(self, fh: IO[bytes], tag: str, path: Path):
        self._fh, self._tag, self._path, self._done = fh, tag, path, not faults.active()
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            n = self._fh.write(data)
            if not self._done and len(data) >= 1024:
                self._done = True
                self._fh.flush()
                faults.point(f"{self._tag}.mid_write", self._path)
        except OSError as err:
            self.error = err
            raise
        return n

    def __getattr__(self, name):
        return getattr(self._fh, name)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some file systems cannot open directories; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_error(err: OSError, path: Path) -> OSError:
    """``err`` re-raised as the same kind of OSError naming ``path`` (the file the user knows)."""
    if err.filename is not None and str(err.filename) == str(path) and (err.strerror or "").startswith("cannot write"):
        return err
    return type(err)(err.errno or errno.EIO, f"cannot write ({err.strerror or err})", str(path))


def atomic_write(path: str | os.PathLike, writer: Callable[[IO[bytes]], None], *, tag: str = "file") -> None:
    """Write ``path`` atomically; ``writer(fh)`` writes the contents to a binary file object.

    ``tag`` names the fault points of this write (``TAG.mid_write``, ``TAG.before_rename``,
    ``TAG.after_rename``; see :mod:`mona.faults`)."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    except OSError as err:
        raise write_error(err, path) from err
    try:
        with os.fdopen(fd, "wb") as fh:
            faults.point(f"{tag}.write", path)
            guarded = _File(fh, tag, path)
            try:
                writer(guarded)  # type: ignore[arg-type]
            except Exception as err:
                if guarded.error is not None and guarded.error is not err:
                    raise guarded.error from err
                raise
            fh.flush()
            os.fsync(fh.fileno())
        faults.point(f"{tag}.before_rename", path)
        os.replace(tmp, path)
        faults.point(f"{tag}.after_rename", path)
        _fsync_dir(path.parent)
    except OSError as err:
        raise write_error(err, path) from err
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, tag: str = "file") -> None:
    atomic_write(path, lambda fh: fh.write(data), tag=tag)


def atomic_write_text(path: str | os.PathLike, text: str, *, tag: str = "file") -> None:
    atomic_write(path, lambda fh: fh.write(text.encode()), tag=tag)


def remove_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of interrupted :func:`atomic_write` calls in ``directory`` (only call
    this while holding the directory's lock: a live writer's file would be deleted too)."""
    removed = []
    d = Path(directory)
    if not d.is_dir():
        return removed
    for p in d.iterdir():
        if p.name.startswith(".") and p.name.endswith(TMP_SUFFIX) and p.is_file():
            try:
                p.unlink()
                removed.append(p)
            except FileNotFoundError:
                pass
    return removed
