"""What every reporter shares: the :class:`Reporter` protocol, where a report goes, and
which threads it covers.

A reporter is one output format: its name (the ``--format`` value), whether its output
is bytes, its usual file name ending, and ``render(data, stream, options)``, a pure
function of a trace (or of what was computed from one, a coverage) written to a stream
(pyinstrument's ``renderers/base.py``, coverage.py's ``Reporter`` protocol); the
formats a command offers are a table of them, in :mod:`.table`.

:func:`write_report` (and :func:`write_to`, :func:`write_bytes_to` for the reports that
take more than a reporter's options) is the one place that knows ``-`` means stdout and
that a file left half-written by an error (a bug, Ctrl-C, a full disk) must not stay
behind: a reporter writes to a stream and never opens files itself (coverage.py's
``render_report``). :func:`check_output` lets a command fail on a bad path before it
does the work.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Protocol, TypeVar

from ..errors import UsageError

if TYPE_CHECKING:
    from ..trace import Trace

#: What a reporter reports on: a :class:`~branchtrace.trace.Trace`, a coverage, ...
D = TypeVar("D")
D_contra = TypeVar("D_contra", contravariant=True)


@dataclass(frozen=True, slots=True)
class Options:
    """What a command's flags ask of a reporter; each reporter uses what applies to it."""

    tid: int | None = None       # only this thread (None: every thread)
    test_name: str = ""          # lcov: the test name (TN:) of the record
    all_sources: bool = False    # lcov, text: keep source files that are not on disk
    include: tuple[str, ...] = ()  # lcov, text: keep only source files matching one
    omit: tuple[str, ...] = ()     # lcov, text: leave out source files matching one
    show_missing: bool = False   # text: list the lines that never ran


class Reporter(Protocol[D_contra]):
    """One output format."""

    @property
    def name(self) -> str:
        """The format's name, as ``--format`` spells it."""

    @property
    def binary(self) -> bool:
        """Whether the output is bytes (never sent to a terminal), not text."""

    @property
    def extension(self) -> str:
        """The usual ending of its file name (``.json``)."""

    def render(self, data: D_contra, out: IO[Any], options: Options) -> list[str]:
        """Write the report of ``data`` to ``out`` (a text stream, or a byte stream when
        :attr:`binary`); return warnings, one line each, about what it leaves out."""


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


def write_report(reporter: Reporter[D], data: D, path: str,
                 options: Options = Options()) -> list[str]:
    """Write ``reporter``'s report of ``data`` to ``path`` (``-``: stdout); its warnings."""
    warnings: list[str] = []
    _write(path, reporter.binary, lambda out: warnings.extend(reporter.render(data, out, options)))
    return warnings


def write_to(path: str, write: Callable[[IO[str]], object]) -> None:
    """Call ``write(stream)`` with ``path`` opened for text (``-``: stdout)."""
    _write(path, False, write)


def write_bytes_to(path: str, write: Callable[[IO[bytes]], object]) -> None:
    """Like :func:`write_to` for binary output; refuses to send it to a terminal."""
    _write(path, True, write)


def _write(path: str, binary: bool, write: Callable[[IO[Any]], object]) -> None:
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
        from ..errors import UnknownThreadError

        known = ", ".join(str(t) for t in trace.threads) or "none"
        raise UnknownThreadError(f"no thread {tid} in the trace (its threads: {known})")
    return [tid]
