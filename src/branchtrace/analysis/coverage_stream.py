"""Coverage of a trace whose branches come piece by piece (a trace file read chunk by
chunk), in memory that grows with the distinct runs and edges, never with the branches.

Each thread's pieces and gaps are tallied into counted runs and edges
(:class:`~branchtrace.decode.runs.PieceTally`: a run goes from a branch's target to the
end of the next branch's instruction; the branch before a piece pairs with the piece's
first; a gap breaks the pair and makes the next branch a head), and the coverage is
computed from the counts (coverage_counts.py) by :func:`~.coverage.compute`'s rules. A
test checks that the result equals ``compute`` over the whole trace in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import numpy as np

from ..decode.runs import PieceTally, RunCounts
from ..model import Gap
from .code import CodeReader
from .coverage import Coverage
from .coverage_counts import compute_counted

if TYPE_CHECKING:
    from ..trace import Trace

#: The branches of one thread, oldest first: arrays of BRANCH_DTYPE, and gaps.
Source = Callable[[int], Iterable["np.ndarray | Gap"]]


def tally(items: Iterable[np.ndarray | Gap]) -> RunCounts:
    """The counted runs and edges of one thread's pieces and gaps."""
    counts = PieceTally()
    for item in items:
        if isinstance(item, Gap):
            counts.gap(item.count)
        else:
            counts.piece(item)
    return counts.result()


def compute_streamed(trace: Trace, source: Source, reader: CodeReader | None = None, *,
                     first_ips: dict[int, int] | None = None) -> Coverage:
    """The coverage of ``trace``'s threads, whose branches ``source(tid)`` yields (the
    trace's own arrays are not read: they may be empty)."""
    return compute_counted(trace, lambda tid: tally(source(tid)), reader, first_ips=first_ips)
