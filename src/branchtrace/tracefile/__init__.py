"""Trace files: what a recording leaves behind, to keep, share and analyze.

* :mod:`.format` - the byte layout in code: magic, version (with its changelog),
  record types and payloads (specified in docs/trace-format.md);
* :mod:`.writer` - :class:`TraceWriter`, which appends records while a recording runs,
  and :func:`save` for an in-memory trace;
* :mod:`.reader` - :func:`scan`, which reads and checks the records of a file;
* :mod:`.load` - :func:`open_trace`, which decodes a file into a :class:`~branchtrace.Trace`.

Commands that read a trace file call :func:`open_trace`: it raises
:class:`~branchtrace.errors.TraceFormatError` with a one-line message when the file
cannot be used at all, and otherwise returns what the file holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .format import MAGIC, VERSION
    from .load import CORRUPT, open_trace, to_trace
    from .reader import TraceFile, scan
    from .writer import TraceWriter, save

__all__ = ["CORRUPT", "MAGIC", "VERSION", "TraceFile", "TraceWriter", "open_trace", "save",
           "scan", "to_trace"]

#: Where each name lives. They are imported on first use (PEP 562): recording needs
#: the format and the writer, not the readers (~15 ms of imports less before a run's
#: agent can load).
_LAZY = dict(MAGIC="format", VERSION="format", CORRUPT="load", open_trace="load",
             to_trace="load", TraceFile="reader", scan="reader", TraceWriter="writer",
             save="writer")


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # Static imports, not importlib: the readers' AST scan (tests/reliability) forbids it.
    if module == "format":
        from . import format as format_

        value = getattr(format_, name)
    elif module == "load":
        from . import load as load_

        value = getattr(load_, name)
    elif module == "reader":
        from . import reader as reader_

        value = getattr(reader_, name)
    else:
        from . import writer as writer_

        value = getattr(writer_, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
