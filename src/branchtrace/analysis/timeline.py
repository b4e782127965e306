"""Time of a point in a thread's branch sequence, for timeline reports.

Branches carry no timestamps of their own: :meth:`Trace.times` spreads them over the
span of the chunk each was recorded in (a trace file knows when each chunk was drained:
its first and last record's times), or over the whole recording. A trace without a time
span (built by hand) gets one microsecond per branch, and says so. docs/profiles.md says
how good these estimates are.

Times are integers from start to finish: nanoseconds from the start of the trace, then
*ticks* of 1/1024 microsecond (:func:`ticks`) for the JSON formats, written exactly
(:func:`micros_text`). A tick count over 1024 is a binary fraction, so a reader that
adds a start and a duration in floating point (speedscope's importer, a browser) gets
exactly the end the writer meant: with decimal microseconds (``5022.72 + 62.72 =
5085.4400000000005``) a call that ends where its sibling starts seemed to overlap it,
and the importer nested the sibling inside it.
"""

from __future__ import annotations

import numpy as np

from ..trace import Trace

#: Ticks in a microsecond: times in the JSON formats are multiples of 1/1024 us (~1 ns).
TICKS_PER_US = 1024


def ticks(ns: np.ndarray) -> np.ndarray:
    """Nanoseconds (int64, >= 0) as ticks of 1/1024 us, rounded down: monotonic, so
    what nests in nanoseconds nests in ticks."""
    return (np.asarray(ns, dtype=np.int64) * TICKS_PER_US) // 1000


#: The decimals of each fraction of a microsecond in ticks ("" for none).
_FRACTIONS = [""] + [f".{f * 9765625:010d}".rstrip("0") for f in range(1, TICKS_PER_US)]


def micros_text(t: np.ndarray) -> list[str]:
    """Ticks as decimal microseconds, exactly (at most ten decimals: 1/1024 is
    0.0009765625); a JSON reader's double holds each value exactly."""
    whole, frac = np.divmod(np.asarray(t, dtype=np.int64), TICKS_PER_US)
    fractions = _FRACTIONS
    return [f"{w}{fractions[f]}" for w, f in zip(whole.tolist(), frac.tolist())]


class Timeline:
    """Times of run boundaries of one thread, in integer nanoseconds from the start of
    the trace.

    Position ``p`` is the start of run ``p``: 0 is the start of the trace, ``p`` in
    ``1..n`` is the moment of branch ``p - 1``, ``n + 1`` is the end of the trace.
    """

    def __init__(self, trace: Trace, tid: int) -> None:
        n = len(trace.branches(tid))
        start, end = _ns(trace.start_time), _ns(trace.end_time)
        y = np.empty(n + 2, dtype=np.int64)
        y[0] = 0
        if end > start:
            self.real = True
            self.note = ("times interpolated over the branch index between the times the "
                         "trace's chunks were drained")
            span = end - start
            y[1:n + 1] = trace.times(tid) - start
            y[n + 1] = span
            np.clip(y, 0, span, out=y)
            np.maximum.accumulate(y, out=y)
        else:
            self.real = False
            self.note = "the trace has no time span: one microsecond per branch"
            y[1:] = np.arange(1, n + 2, dtype=np.int64) * 1000
        self._y = y

    def ns(self, positions: np.ndarray) -> np.ndarray:
        """Nanoseconds from the trace start at each position (monotonic in position)."""
        p = np.clip(np.asarray(positions, dtype=np.int64), 0, len(self._y) - 1)
        return self._y[p]

    def ticks(self, positions: np.ndarray) -> np.ndarray:
        """:meth:`ns` in ticks of 1/1024 us (see :func:`ticks`)."""
        return ticks(self.ns(positions))

    @property
    def end_ns(self) -> int:
        return int(self._y[-1])


def _ns(seconds: float) -> int:
    """Seconds since the epoch as integer nanoseconds, the way :meth:`Trace.times` rounds
    them (so the two agree exactly)."""
    return min(max(0, round(seconds * 1e9)), 1 << 62)
