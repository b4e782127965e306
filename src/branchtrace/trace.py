"""A recorded trace: per-thread branch arrays, module maps, gaps, and how the target ended.

This is what reporters read. A :class:`Trace` comes from a live recording
(:func:`branchtrace.recorder.record`) or from a trace file (:func:`branchtrace.open`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from .errors import UnknownProcessError
from .model import BRANCH_DTYPE, Branch, ExitInfo, Gap, ModuleMap, ProcessInfo, branches_of

#: When the branches of a thread were recorded, chunk by chunk: branches
#: ``index .. index + count - 1`` were produced between ``first_ns`` and ``last_ns``
#: (wall clock, ns since the Unix epoch; ``last_ns`` is when the chunk was drained).
CHUNK_TIMES_DTYPE = np.dtype([("index", "<u8"), ("count", "<u8"), ("first_ns", "<u8"),
                              ("last_ns", "<u8")])

if TYPE_CHECKING:
    from .symbols import Location, Symbolizer


@dataclass
class Trace:
    """A recorded trace, all in memory: per-thread branch arrays (``threads``: tid ->
    :data:`~branchtrace.BRANCH_DTYPE` array, oldest first), module maps, gaps (records
    lost, as values), notes, how the target ended, and a symbolizer.

    :func:`branchtrace.record` returns one; :func:`branchtrace.open` returns a
    :class:`~branchtrace.TraceReader`, a ``Trace`` that decodes only what is asked."""

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
    #: every process traced, the first (``pid``) first. Never empty once built: a
    #: backend or a file that gives none makes one from the fields above. ``threads``
    #: holds the threads of all of them; ``exit``, ``argv`` and ``modules`` above are
    #: the first process's. Read one process with :meth:`for_pid`.
    processes: list[ProcessInfo] = field(default_factory=list)
    _symbolizer: Symbolizer | None = field(default=None, repr=False)
    _views: dict[int, Trace] = field(default_factory=dict, init=False, repr=False,
                                     compare=False)

    def __post_init__(self) -> None:
        if not self.processes:
            self.processes = [ProcessInfo(
                self.pid, 0, tuple(self.argv), self.exit, tuple(self.modules),
                tuple(self.threads), round(self.start_time * 1e9), round(self.end_time * 1e9))]

    # ---- processes ---------------------------------------------------------------------

    @property
    def pids(self) -> list[int]:
        """The pid of every process traced, the first first."""
        return [p.pid for p in self.processes]

    def process_of(self, tid: int) -> ProcessInfo:
        """The process thread ``tid`` belongs to (a thread no process lists: the first,
        as in a file from before processes were recorded)."""
        for process in self.processes:
            if tid in process.threads:
                return process
        return self.processes[0]

    def process(self, pid: int) -> ProcessInfo:
        """The process ``pid``; an unknown pid is a one-line
        :class:`~branchtrace.errors.UnknownProcessError` (a ``UsageError``)."""
        for process in self.processes:
            if process.pid == pid:
                return process
        raise UnknownProcessError(f"no process {pid} in this trace (its processes: "
                         f"{', '.join(str(p) for p in self.pids)})")

    def tids_of(self, pid: int) -> list[int]:
        """The recorded threads of process ``pid``, in the trace's order."""
        return [tid for tid in self.threads if self.process_of(tid).pid == pid]

    def for_pid(self, pid: int) -> Trace:
        """The trace of one process: its threads, modules (its symbolizer: another
        process's maps may cover the same addresses), exit, gaps and notes (those that
        name another process, ``"pid N: ..."``, are left out). Its start and end times
        stay the whole trace's (one clock for every process's timeline; the process's
        own are in its :class:`ProcessInfo`). ``self`` when it is the only process."""
        process = self.process(pid)
        if len(self.processes) == 1:
            return self
        if pid in self._views:       # one view per process: its symbolizer is built once
            return self._views[pid]
        tids = self.tids_of(pid)
        others = tuple(f"pid {p.pid}:" for p in self.processes if p.pid != pid)
        view = self._views[pid] = Trace(
            backend=self.backend, mode=self.mode, argv=process.argv, pid=pid,
            exit=process.exit,
            modules=list(process.modules or (self.modules if pid == self.pids[0] else ())),
            threads={t: self.threads[t] for t in tids},
            gaps=[g for g in self.gaps if g.tid in tids],
            written={t: n for t, n in self.written.items() if t in tids},
            lost={t: n for t, n in self.lost.items() if t in tids},
            notes=[n for n in self.notes if not n.startswith(others)],
            start_time=self.start_time, end_time=self.end_time, producer_waits=self.producer_waits,
            capacity=self.capacity, truncated=self.truncated,
            chunk_times={t: c for t, c in self.chunk_times.items() if t in tids},
            processes=[process],
        )
        return view

    def per_process(self) -> list[Trace]:
        """:meth:`for_pid` of every process, the first first."""
        return [self.for_pid(p.pid) for p in self.processes]

    def branches(self, tid: int | None = None) -> np.ndarray:
        """The branches of one thread (default: the first one), oldest first."""
        if tid is None:
            if not self.threads:
                return np.zeros(0, dtype=BRANCH_DTYPE)
            tid = next(iter(self.threads))
        return self.threads.get(tid, np.zeros(0, dtype=BRANCH_DTYPE))

    def __iter__(self) -> Iterator[Branch]:
        """Every branch as a :class:`~branchtrace.Branch`, thread after thread (slow:
        one Python object per branch; prefer the arrays)."""
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
        """How many branches the trace holds, over every thread."""
        return sum(len(a) for a in self.threads.values())

    @property
    def symbolizer(self) -> Symbolizer:
        """The :class:`~branchtrace.symbols.Symbolizer` of the (first) process's
        modules, built on first use (:meth:`for_pid` for another process's)."""
        if self._symbolizer is None:
            from .symbols import Symbolizer

            self._symbolizer = Symbolizer(self.modules)
        return self._symbolizer

    def symbolize(self, addresses: Sequence[int] | np.ndarray) -> list[Location]:
        """The :class:`~branchtrace.Location` (module, function, offset, file, line) of
        each address, in order: one symbolizer pass over the distinct addresses. (For
        millions of addresses, ``symbolizer.resolve(array)`` gives parallel arrays.)"""
        return self.symbolizer.resolve(np.asarray(addresses, dtype=np.uint64)).locations()
