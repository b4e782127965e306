"""The last branches of a thread, read from the end of a trace file.

A crash report or ``history --last N`` wants the newest few branches of a thread:
decoding the whole thread (17 bytes a branch, 13 GB for 800M branches) for them is what
made those commands run out of memory on long traces. :func:`last_branches` decodes only
the thread's last chunks (:class:`~.stream.ThreadStream` from a chunk on: the branch
between that chunk and the one before is paired exactly as when read from the start),
going back chunk by chunk, twice as many each time, until it holds enough branches.
Memory is bounded by the chunks it needs, never by the length of the trace.
"""

from __future__ import annotations

import numpy as np

from ..model import BRANCH_DTYPE, Gap
from .reader import TraceFile
from .stream import CORRUPT, Piece, ThreadStream


def last_branches(tf: TraceFile, tid: int, n: int) -> np.ndarray:
    """The last ``n`` branches of thread ``tid`` (fewer when it has fewer), oldest
    first: ``open_trace(...).branches(tid)[-n:]``."""
    if n <= 0:
        return np.zeros(0, BRANCH_DTYPE)
    total = ThreadStream(tf, tid).chunk_count
    step = 1
    while True:
        start = max(0, total - step)
        parts = [p.branches for p in ThreadStream(tf, tid, from_chunk=start)
                 if isinstance(p, Piece)]
        got = sum(len(p) for p in parts)
        if got >= n or start == 0:
            joined = np.concatenate(parts) if parts else np.zeros(0, BRANCH_DTYPE)
            return joined[-n:].copy()
        step *= 2


def count_branches(tf: TraceFile, tid: int) -> tuple[int, list[Gap]]:
    """The branches of thread ``tid`` and its gaps, in the order :func:`~.load.to_trace`
    lists them (the file's gaps, then the missing chunks), with their places: one pass
    over the thread, in memory bounded by a chunk."""
    stream = ThreadStream(tf, tid)
    gaps = [p for p in stream if isinstance(p, Gap)]
    return stream.n, [g for g in gaps if g.reason != CORRUPT] + [g for g in gaps
                                                                   if g.reason == CORRUPT]
