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

from .format import MAGIC, VERSION
from .load import CORRUPT, open_trace, to_trace
from .reader import TraceFile, scan
from .writer import TraceWriter, save

__all__ = ["CORRUPT", "MAGIC", "VERSION", "TraceFile", "TraceWriter", "open_trace", "save",
           "scan", "to_trace"]
