"""Where a report goes, and which threads it covers: what every reporter shares.

:func:`render` is the one place that knows ``-`` means stdout and that a file left
half-written by an error (a bug, Ctrl-C, a full disk) must not stay behind: the
reporter writes to a stream and never opens files itself (coverage.py's
``render_report``). :func:`check_output` lets a command fail on a bad path before it
does the work.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

from ..errors import UsageError

if TYPE_CHECKING:
    from ..trace import Trace


def check_output(path: str, what: str = "") -> None:
    """Raise :class:`UsageError` now if ``path`` cannot be written later (``what``, the
    option that named it, begins the message)."""
    if path == "-":
        return
    head = f"{what}: " if what else ""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"{head}cannot write {path}: no such directory {parent}")
    if os.path.isdir(path):
        raise UsageError(f"{head}cannot write {path}: it is a directory")
    if not os.access(path if os.path.exists(path) else parent, os.W_OK):
        raise UsageError(f"{head}cannot write {path}: permission denied")


def render(path: str, write: Callable[[IO[str]], object]) -> None:
    """Call ``write(stream)`` with ``path`` opened for text (``-``: stdout)."""
    _render(path, False, write)


def render_bytes(path: str, write: Callable[[IO[bytes]], object]) -> None:
    """Like :func:`render` for binary output; refuses to send it to a terminal."""
    _render(path, True, write)


def _render(path: str, binary: bool, write: Callable[[IO[Any]], object]) -> None:
    if path == "-":
        if binary and sys.stdout.isatty():
            raise UsageError("the output is binary: write it to a file (-o FILE) or a pipe")
        stream: IO[Any] = sys.stdout.buffer if binary else sys.stdout
        write(stream)
        stream.flush()
        return
    check_output(path)
    try:
        special = not stat.S_ISREG(os.stat(path).st_mode)   # /dev/null, a FIFO: keep it
    except OSError:
        special = False
    try:
        f: IO[Any] = (open(path, "wb") if binary  # noqa: SIM115 - closed by the with below
                      else open(path, "w", encoding="utf-8"))  # noqa: SIM115
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with f:
            write(f)
    except BaseException as exc:
        if not special:
            try:
                os.unlink(path)
            except OSError:
                pass
        if isinstance(exc, OSError) and not isinstance(exc, BrokenPipeError):
            raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise


def pick_threads(trace: Trace, tid: int | None) -> list[int]:
    """The threads a report covers: ``tid`` alone, or all of them (None)."""
    if tid is None:
        return list(trace.threads)
    if tid not in trace.threads:
        known = ", ".join(str(t) for t in trace.threads) or "none"
        raise UsageError(f"no thread {tid} in the trace (its threads: {known})")
    return [tid]
