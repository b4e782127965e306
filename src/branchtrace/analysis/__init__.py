"""Analysis of a trace: call stacks and function segments, instruction runs, timelines,
and the counts behind statistics. Pure functions of a :class:`~branchtrace.trace.Trace`;
the reporters turn their results into text and files.

Typical use::

    calls = call_trace(trace, tid)          # frames and GDB-style function segments
    runs = Runs(trace, tid)                 # instructions between branches, from the binary
    runs.counts, runs.instructions(k)
"""

from __future__ import annotations

from .callstack import CallTrace, call_trace
from .code import CodeReader, Instruction
from .functions import FunctionIndex, FunctionInfo, Keys
from .hot import Edge, HotFunction, all_branches, hot_edges, hot_functions, kind_counts
from .runs import Runs
from .timeline import Timeline

__all__ = [
    "CallTrace",
    "CodeReader",
    "Edge",
    "FunctionIndex",
    "FunctionInfo",
    "HotFunction",
    "Instruction",
    "Keys",
    "Runs",
    "Timeline",
    "all_branches",
    "call_trace",
    "hot_edges",
    "hot_functions",
    "kind_counts",
]
