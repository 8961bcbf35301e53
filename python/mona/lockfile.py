"""One writer per output directory: ``DIR/.mona.lock`` holds the owner's pid (and host), and an
exclusive ``flock`` on it is the lock itself.

The kernel drops a ``flock`` when its process dies, however it dies (``kill -9`` included), so a
lock file left behind by a dead process is stale by construction: the next run takes it over (and
says so). A second live process fails at once with :class:`~mona.errors.LockedError` naming the
directory and the owner's pid. Re-entrant within a process (the two-stage pipeline locks its
``out_dir`` and each stage locks its own).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
from pathlib import Path
from typing import Iterator

from .errors import LockedError

LOCK_NAME = ".mona.lock"
log = logging.getLogger("mona")
_HELD: dict[str, list] = {}  # resolved lock path -> [fd, depth]


def _owner(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        return "unknown pid"
    return text or "unknown pid"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def locked(directory: str | os.PathLike, what: str) -> Iterator[Path]:
    """Hold the lock of ``directory`` (created if needed) for the ``with`` block. ``what`` names the
    work in the error message (``mona train``, ``mona prepare``). If this call created the directory
    and it is empty at the end (e.g. a later error), it is removed again."""
    d = Path(directory)
    created = not d.exists()
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LockedError(f"{d}: cannot create the directory ({err.strerror or err})") from err
    path = d / LOCK_NAME
    key = str(path.resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield path
        finally:
            _HELD[key][1] -= 1
        return
    fd = _acquire(path, what)
    _HELD[key] = [fd, 1]
    try:
        yield path
    finally:
        del _HELD[key]
        try:
            os.unlink(path)
        except OSError:
            pass
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):
                d.rmdir()  # only if empty


def _acquire(path: Path, what: str) -> int:
    for _ in range(10):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise LockedError(
                f"{path.parent}: the directory is not writable (creating its lock file "
                f"{LOCK_NAME}: {err.strerror or err})"
            ) from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _owner(path)
            os.close(fd)
            raise LockedError(
                f"{path.parent}: in use by another {what} ({owner}, lock file {path}); wait for it "
                f"to finish or choose another directory"
            ) from None
        # the holder may have unlinked the file between our open and flock: then lock the new one
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        previous = os.read(fd, 200).decode(errors="replace").strip()
        if previous:
            pid = previous.split()[1] if previous.startswith("pid ") else ""
            dead = pid.isdigit() and not _pid_alive(int(pid))
            log.warning(
                "%s: taking over a stale lock (%s%s)",
                path.parent,
                previous,
                ", no longer running" if dead else ", its lock was released",
            )
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        return fd
    raise LockedError(f"{path}: could not take the lock (the file kept changing)")
