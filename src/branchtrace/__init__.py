"""branchtrace: record the branches a Linux program takes, and turn them into answers.

The Python API (docs/api.md is its reference, docs/cookbook.md shows each task)::

    import branchtrace
    trace = branchtrace.record(branchtrace.Target(argv=("./prog",)),
                               branchtrace.RecordConfig(mode="stream"))
    trace.branches(trace.pid)     # numpy array of (from_ip, to_ip, kind), oldest first

    with branchtrace.open("run.btrace") as t:     # a trace file, decoded when asked
        t.calls("leaf"), t.hot_edges(5), t.coverage().lines("prog.c")
        for piece in t.iter_branches():           # bounded memory, gaps as values
            ...

Only the names in ``__all__`` are the API; the modules under it may change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from ._version import __version__
from .errors import (
    BackendUnavailable,
    BranchtraceError,
    NotInTraceError,
    StoreError,
    TargetError,
    TraceFormatError,
    UnknownFunctionError,
    UnknownProcessError,
    UnknownThreadError,
    UsageError,
)

if _TYPE_CHECKING:
    import os

    from .api_tasks import CoverageData
    from .api_types import (
        BackendName,
        CallNode,
        Column,
        CoverageFormat,
        HistoryKind,
        HotEdge,
        Mode,
        Place,
        ProfileFormat,
    )
    from .backends import Target
    from .model import BRANCH_DTYPE, Branch, BranchKind, ExitInfo, Gap, ModuleMap, ProcessInfo
    from .reader import TraceReader, record
    from .recorder import RecordConfig
    from .symbols import Location
    from .trace import Trace
    from .tracefile.stream import Piece

#: Where each name of the API lives. They are imported on first use (PEP 562), so that
#: ``import branchtrace.cli`` does not pull in numpy: ``branchtrace run`` starts the
#: program and Frida's attach first, and imports the rest while they run.
_LAZY = {
    "BRANCH_DTYPE": "model", "Branch": "model", "BranchKind": "model", "ExitInfo": "model",
    "Gap": "model", "ModuleMap": "model", "ProcessInfo": "model",
    "RecordConfig": "recorder", "record": "reader", "TraceReader": "reader",
    "Target": "backends", "Trace": "trace", "Location": "symbols", "Piece": "tracefile.stream",
    "CoverageData": "api_tasks",
    "BackendName": "api_types", "CallNode": "api_types", "Column": "api_types",
    "CoverageFormat": "api_types", "HistoryKind": "api_types", "HotEdge": "api_types",
    "Mode": "api_types", "Place": "api_types", "ProfileFormat": "api_types",
}

__all__ = [
    "BRANCH_DTYPE",
    "BackendName",
    "BackendUnavailable",
    "Branch",
    "BranchKind",
    "BranchtraceError",
    "CallNode",
    "Column",
    "CoverageData",
    "CoverageFormat",
    "ExitInfo",
    "Gap",
    "HistoryKind",
    "HotEdge",
    "Location",
    "Mode",
    "ModuleMap",
    "NotInTraceError",
    "Piece",
    "Place",
    "ProcessInfo",
    "ProfileFormat",
    "RecordConfig",
    "StoreError",
    "Target",
    "TargetError",
    "Trace",
    "TraceFormatError",
    "TraceReader",
    "UnknownFunctionError",
    "UnknownProcessError",
    "UnknownThreadError",
    "UsageError",
    "__version__",
    "open",
    "record",
]


def open(path: str | os.PathLike[str]) -> TraceReader:  # noqa: A001 - the API's name for it
    """Open the trace file at ``path`` (written by ``branchtrace run -o FILE`` or
    :func:`record`) as a :class:`TraceReader`: a :class:`Trace` that decodes nothing
    until asked, and a context manager (``with branchtrace.open(path) as t:``).

    Raises :class:`TraceFormatError` (a :class:`BranchtraceError`) with a one-line
    message when the file cannot be read at all; a damaged or cut-short file gives
    what it holds, with gaps and notes saying what is missing."""
    from .reader import TraceReader

    return TraceReader(path)


def __getattr__(name: str) -> _Any:
    import importlib

    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'branchtrace' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
