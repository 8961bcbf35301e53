"""The two kinds of error a ``mona`` command reports, and their exit codes.

* :class:`UsageError` (exit code 2): what was typed is wrong -- a command-line option, a config key,
  its type or range, a malformed ``key=value`` override, a config file that is missing or not YAML, a
  ``--resume`` whose config differs from the checkpoint's without ``--resume-override``.
* :class:`DataError` (exit code 1): a file the command reads or writes is wrong or cannot be written
  -- a raw volume, a prepared cache, a checkpoint, a labeled list, a full disk, a read-only or locked
  output directory, a training run that stopped on non-finite losses.

Both subclass ``ValueError`` (callers of the Python API that catch ``ValueError`` keep working). The
CLI prints one line, ``mona COMMAND: error: <file or key>: <what was wrong>``, and no traceback unless
``--debug`` is given; any other exception (a bug) also exits with 1, with a line saying so.
"""

from __future__ import annotations

EXIT_DATA = 1
EXIT_USAGE = 2


class UsageError(ValueError):
    """A command-line argument or config key/value is wrong; the message names it (exit code 2)."""

    exit_code = EXIT_USAGE


class DataError(ValueError):
    """A raw or prepared data file, a checkpoint or an output is unusable; the message names the file
    and the problem (exit code 1)."""

    exit_code = EXIT_DATA


class TrainingStopped(DataError):
    """Training stopped on purpose (e.g. too many consecutive non-finite steps); the last good
    checkpoint is intact (exit code 1)."""


class LockedError(DataError):
    """Another live process holds the lock of an output directory or cache (exit code 1)."""


class MissingFileError(DataError, FileNotFoundError):
    """An input file does not exist (exit code 1); also a ``FileNotFoundError`` for API callers."""
