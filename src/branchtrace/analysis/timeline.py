"""Time of a point in a thread's branch sequence, for timeline reports.

Branches carry no timestamps of their own: :meth:`Trace.times` spreads them over the
span of the chunk each was recorded in (a trace file knows each chunk's first and last
time), or over the whole recording. A trace without a time span (built by hand) gets
one microsecond per branch, and says so.
"""

from __future__ import annotations

import numpy as np

from ..trace import Trace


class Timeline:
    """Times (microseconds from the start of the trace) of run boundaries of one thread.

    Position ``p`` is the start of run ``p``: 0 is the start of the trace, ``p`` in
    ``1..n`` is the moment of branch ``p - 1``, ``n + 1`` is the end of the trace.
    """

    def __init__(self, trace: Trace, tid: int) -> None:
        n = len(trace.branches(tid))
        start, end = float(trace.start_time), float(trace.end_time)
        y = np.empty(n + 2, dtype=np.float64)
        y[0] = 0.0
        if end > start:
            self.real = True
            self.note = "times interpolated over the branch index between the trace's timestamps"
            span = (end - start) * 1e6
            y[1:n + 1] = (trace.times(tid) - start * 1e9) / 1e3
            y[n + 1] = span
            np.clip(y, 0.0, span, out=y)
            np.maximum.accumulate(y, out=y)
        else:
            self.real = False
            self.note = "the trace has no time span: one microsecond per branch"
            y[1:] = np.arange(1, n + 2, dtype=np.float64)
        self._y = y

    def at(self, positions: np.ndarray) -> np.ndarray:
        """Microseconds from the trace start at each position (monotonic in position)."""
        p = np.clip(np.asarray(positions, dtype=np.int64), 0, len(self._y) - 1)
        return self._y[p]

    @property
    def end(self) -> float:
        return float(self._y[-1])
