"""The value types of the Python API: string choices as ``Literal`` types, and the
plain records the reader's task methods return (:mod:`branchtrace.reader`).

Everything here is plain data (frozen dataclasses of ints, strings and tuples), so a
result can be kept, compared, pickled or turned into JSON without the trace it came
from. ``typing.get_args(Mode)`` lists a choice's values (a test checks them against
the command line's choices).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

#: How the store keeps a thread's records: ``"ring"`` the newest N (the older ones are
#: overwritten and counted as lost), ``"stream"`` every one (the program waits for room).
Mode = Literal["ring", "stream"]
#: Which backend records: ``"auto"`` the best that can run here, ``"stalker"`` (Frida,
#: fast), ``"ptrace"`` (single-stepping, slow, exact).
BackendName = Literal["auto", "stalker", "ptrace"]
#: The formats of ``branchtrace profile`` (a report made from a trace).
ProfileFormat = Literal["perfetto", "speedscope", "collapsed"]
#: The formats of ``branchtrace coverage``.
CoverageFormat = Literal["drcov", "lcov", "text", "json"]
#: The columns :meth:`~branchtrace.TraceReader.to_arrow` adds on request.
Column = Literal["function", "module", "file", "line", "time"]
#: The two histories of ``branchtrace history``: function calls or instructions.
HistoryKind = Literal["calls", "insns"]


@dataclass(frozen=True, slots=True)
class Place:
    """Where an address lies: its function (None: no symbol covers it), the module's
    base name, the source file (full path, from DWARF) and line, when known."""

    address: int
    function: str | None
    module: str | None
    file: str | None
    line: int | None


@dataclass(frozen=True, slots=True)
class HotEdge:
    """A (from, to) pair of addresses and how often the branch was taken."""

    source: Place             # the branch instruction
    target: Place             # where it went
    kind: str                 # "call", "return", "jump", "cond", ... (BranchKind's name, lower case)
    count: int


@dataclass(frozen=True, slots=True)
class CallNode:
    """One calling context of a thread's call tree: a function, reached through the
    chain of its parents. ``branches``: branches taken while it was the innermost
    frame (its own); ``total``: its own and its callees'."""

    function: str             # the name ("?? (libc.so.6)" for code no symbol names)
    module: str | None        # its module's base name
    file: str | None          # the source file of its first line, when DWARF says
    line: int | None
    branches: int
    total: int
    children: tuple[CallNode, ...]

    def walk(self) -> Iterator[CallNode]:
        """This node and every node under it, parents before children."""
        yield self
        for child in self.children:
            yield from child.walk()

    def find(self, function: str) -> list[CallNode]:
        """The nodes of ``function`` at or under this one (each context it ran in)."""
        return [n for n in self.walk() if n.function == function]
