"""branchtrace: record the branches a Linux program takes, and turn them into answers.

The Python API::

    import branchtrace
    trace = branchtrace.record(branchtrace.Target(argv=("./prog",)),
                               branchtrace.RecordConfig(mode="stream"))
    trace.branches(trace.pid)     # numpy array of (from_ip, to_ip, kind), oldest first
    trace = branchtrace.record(target, config, output="run.btrace")   # also a trace file
    trace = branchtrace.open("run.btrace")                            # read it back
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import BranchtraceError

if TYPE_CHECKING:
    import os

    from .backends import Target
    from .model import BRANCH_DTYPE, Branch, BranchKind, ExitInfo, Gap, ModuleMap
    from .recorder import RecordConfig, record
    from .trace import Trace

#: Where each name of the API lives. They are imported on first use (PEP 562), so that
#: ``import branchtrace.cli`` does not pull in numpy: ``branchtrace run`` starts the
#: program and Frida's attach first, and imports the rest while they run.
_LAZY = {
    "BRANCH_DTYPE": "model", "Branch": "model", "BranchKind": "model", "ExitInfo": "model",
    "Gap": "model", "ModuleMap": "model", "RecordConfig": "recorder", "record": "recorder",
    "Target": "backends", "Trace": "trace",
}

__all__ = [
    "BRANCH_DTYPE",
    "Branch",
    "BranchKind",
    "BranchtraceError",
    "ExitInfo",
    "Gap",
    "ModuleMap",
    "RecordConfig",
    "Target",
    "Trace",
    "__version__",
    "open",
    "record",
]


def open(path: str | os.PathLike[str]) -> Trace:  # noqa: A001 - the API's name for it
    """Read a trace file (written by ``branchtrace run -o FILE``) into a :class:`Trace`.

    Raises :class:`~branchtrace.errors.TraceFormatError` (a :class:`BranchtraceError`)
    with a one-line message when the file cannot be read at all; a damaged or cut-short
    file gives what it holds, with gaps and notes saying what is missing."""
    from .tracefile import open_trace

    return open_trace(path)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'branchtrace' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
