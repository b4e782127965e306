"""branchtrace: record the branches a Linux program takes, and turn them into answers.

The Python API::

    import branchtrace
    trace = branchtrace.record(branchtrace.Target(argv=("./prog",)),
                               branchtrace.RecordConfig(mode="stream"))
    trace.branches(trace.pid)     # numpy array of (from_ip, to_ip, kind), oldest first
"""

from __future__ import annotations

from .backends import Target
from .errors import BranchtraceError
from .model import BRANCH_DTYPE, Branch, BranchKind, ExitInfo, Gap, ModuleMap
from .recorder import RecordConfig, record
from .trace import Trace

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
    "record",
]
__version__ = "0.1.0"
