"""Fault injection for the reliability tests (``tests/faults``): ``MONA_FAULT`` names a point and what
happens there. Unset (the normal case) every hook is one dictionary lookup that finds nothing.

``MONA_FAULT="POINT[@HITS][:ACTION][,POINT...]"``

* ``POINT``: a named place in the code, e.g. ``checkpoint.mid_write`` (bytes of a checkpoint are
  partly written to its temporary file), ``checkpoint.before_rename`` (the temporary file is complete,
  not yet moved into place), ``checkpoint.after_rename``, the same for ``prepare.*`` (a cache volume or
  the manifest), ``log.*`` (the CSV / JSONL logs) and ``config.*`` (``config.yaml``); ``train.after_step``
  (an optimiser step has been applied, nothing written yet); ``loss.TERM`` (the loss term ``TERM`` of a
  training step, e.g. ``loss.ce``); ``grad`` (the gradients of a training step).
* ``HITS``: which arrivals at the point fire, counted from 1 in this process: ``3`` (the third),
  ``3-5``, ``3+`` (the third and every later one); default ``1+`` (every arrival).
* ``ACTION``: ``kill`` (SIGKILL this process: no cleanup, no ``finally``), ``enospc`` / ``eio`` (raise
  ``OSError`` ENOSPC / EIO naming the file being written), ``nan`` / ``inf`` (``loss.TERM``: the term
  and the total loss become non-finite, so do the gradients; ``grad``: one gradient becomes
  non-finite). Default ``kill``.
"""

from __future__ import annotations

import errno
import os
import re
import signal
from dataclasses import dataclass

ENV = "MONA_FAULT"
ACTIONS = ("kill", "enospc", "eio", "nan", "inf")


@dataclass(frozen=True)
class Fault:
    point: str
    first: int
    last: int | None  # None: no upper bound
    action: str


def parse(spec: str) -> dict[str, Fault]:
    """``MONA_FAULT``'s value -> {point: Fault}. A malformed value is an error naming it (never ignored)."""
    out: dict[str, Fault] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        m = re.fullmatch(r"([A-Za-z_][\w.]*)(?:@(\d+)(?:(\+)|-(\d+))?)?(?::(\w+))?", item)
        if not m or (m.group(5) or "kill") not in ACTIONS:
            raise ValueError(
                f"{ENV}={spec!r}: cannot parse {item!r} (POINT[@N|@N+|@N-M][:ACTION], ACTION one of {ACTIONS})"
            )
        point, first, plus, last, action = m.groups()
        lo = int(first) if first else 1
        hi = None if (plus or not first) else int(last) if last else lo
        out[point] = Fault(point, lo, hi, action or "kill")
    return out


def _load() -> tuple[dict[str, Fault], str | None]:
    try:
        return parse(os.environ.get(ENV, "")), None
    except ValueError as err:  # reported when a hook is reached (inside a command: one line, exit 2)
        return {ENV: Fault(ENV, 1, None, "kill")}, str(err)


_FAULTS, _ERROR = _load()
_HITS: dict[str, int] = {}


def active() -> bool:
    return bool(_FAULTS)


def reload() -> None:
    """Re-read ``MONA_FAULT`` and reset the hit counts (tests that set it in-process)."""
    global _FAULTS, _ERROR
    _FAULTS, _ERROR = _load()
    _HITS.clear()


def fires(point: str) -> str | None:
    """Count an arrival at ``point``; return the action if the fault fires now, else None."""
    if _ERROR is not None:
        from .errors import UsageError

        raise UsageError(_ERROR)
    f = _FAULTS.get(point)
    if f is None:
        return None
    n = _HITS[point] = _HITS.get(point, 0) + 1
    if n < f.first or (f.last is not None and n > f.last):
        return None
    return f.action


def point(name: str, path: str | os.PathLike | None = None) -> None:
    """A named point where a process may die or a write may fail: ``kill`` dies here (SIGKILL), ``enospc``
    / ``eio`` raise the OSError a full disk / failing device would, naming ``path``."""
    if not _FAULTS:
        return
    action = fires(name)
    if action is None:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action in ("enospc", "eio"):
        code = errno.ENOSPC if action == "enospc" else errno.EIO
        raise OSError(code, os.strerror(code) + f" (injected at {name})", None if path is None else os.fspath(path))


def poison(name: str) -> float | None:
    """``loss.TERM`` / ``grad`` points: the non-finite value to inject now (``nan`` or ``inf``), or None."""
    if not _FAULTS:
        return None
    action = fires(name)
    if action in ("nan", "inf"):
        return float(action)
    return None
