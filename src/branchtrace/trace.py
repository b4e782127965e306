"""A recorded trace: per-thread branch arrays, module maps, gaps, and how the target ended.

This is what reporters read. A :class:`Trace` comes from a live recording
(:func:`branchtrace.recorder.record`) or from a trace file (:func:`branchtrace.open`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from .model import BRANCH_DTYPE, Branch, ExitInfo, Gap, ModuleMap, branches_of

#: When the branches of a thread were recorded, chunk by chunk: branches
#: ``index .. index + count - 1`` were produced between ``first_ns`` and ``last_ns``
#: (wall clock, ns since the Unix epoch; ``last_ns`` is when the chunk was drained).
CHUNK_TIMES_DTYPE = np.dtype([("index", "<u8"), ("count", "<u8"), ("first_ns", "<u8"),
                              ("last_ns", "<u8")])

if TYPE_CHECKING:
    from .symbols import Symbolizer


@dataclass
class Trace:
    backend: str
    mode: str                                  # "ring" or "stream"
    argv: tuple[str, ...]
    pid: int
    exit: ExitInfo
    modules: list[ModuleMap]
    threads: dict[int, np.ndarray]             # tid -> BRANCH_DTYPE array, oldest first
    gaps: list[Gap] = field(default_factory=list)
    written: dict[int, int] = field(default_factory=dict)   # records produced per thread
    lost: dict[int, int] = field(default_factory=dict)      # records lost per thread
    notes: list[str] = field(default_factory=list)
    start_time: float = 0.0
    end_time: float = 0.0
    producer_waits: int = 0
    capacity: int = 0                          # per-thread buffer capacity, records
    #: True when the trace comes from a file that was cut short (its END record is
    #: missing): what it holds is readable, how the target ended is not known.
    truncated: bool = False
    chunk_times: dict[int, np.ndarray] = field(default_factory=dict)  # CHUNK_TIMES_DTYPE
    _symbolizer: Symbolizer | None = field(default=None, repr=False)

    def branches(self, tid: int | None = None) -> np.ndarray:
        """The branches of one thread (default: the first one), oldest first."""
        if tid is None:
            if not self.threads:
                return np.zeros(0, dtype=BRANCH_DTYPE)
            tid = next(iter(self.threads))
        return self.threads.get(tid, np.zeros(0, dtype=BRANCH_DTYPE))

    def __iter__(self) -> Iterator[Branch]:
        for tid, array in self.threads.items():
            yield from branches_of(array, tid)

    def times(self, tid: int) -> np.ndarray:
        """Estimated wall-clock times of the branches of ``tid`` (int64 ns since the Unix
        epoch), spread evenly over the span of the chunk each was recorded in (over the
        whole recording for branches no chunk covers)."""
        n = len(self.branches(tid))
        index = np.arange(n, dtype=np.float64)
        top = (1 << 62)

        def ns(t: float) -> int:
            return min(max(0, round(t * 1e9)), top)

        start = ns(self.start_time)
        span = max(ns(self.end_time) - start, 0)
        out = start + np.round(span * index / max(n - 1, 1)).astype(np.int64)
        for c in self.chunk_times.get(tid, np.zeros(0, CHUNK_TIMES_DTYPE)):
            lo, count = int(c["index"]), int(c["count"])
            hi = min(lo + count, n)
            if lo < hi:
                first = min(int(c["first_ns"]), top)
                span = max(min(int(c["last_ns"]), top) - first, 0)
                out[lo:hi] = first + np.round(span * (index[lo:hi] - lo + 1) / count).astype(np.int64)
        return out

    def total(self) -> int:
        return sum(len(a) for a in self.threads.values())

    @property
    def symbolizer(self) -> Symbolizer:
        if self._symbolizer is None:
            from .symbols import Symbolizer

            self._symbolizer = Symbolizer(self.modules)
        return self._symbolizer

    def symbolize(self, addresses: Sequence[int] | np.ndarray) -> list[object]:
        """Locations (module, function, offset, file, line) of the addresses."""
        sym = self.symbolizer
        return [sym.describe(int(a)) for a in np.asarray(addresses, dtype=np.uint64)]
