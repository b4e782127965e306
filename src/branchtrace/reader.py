"""The reader of a trace file: what :func:`branchtrace.open` returns.

A :class:`TraceReader` is a :class:`~branchtrace.Trace` (every existing use of one
works on it) that decodes nothing until asked. Opening a file checks its records
(``tracefile.scan``: the compressed chunks stay compressed) and reads what is small:
processes, modules, threads, exit, notes. Then:

* the :class:`Trace` fields that hold branches (``threads``, ``chunk_times``; and what
  reads them: ``branches()``, ``times()``, ``total()``, ``for_pid()``) decode the whole
  trace into memory on first use (17 bytes a branch), as ``open()`` always did;
* :meth:`TraceReader.iter_branches` yields the branches chunk by chunk in memory bounded
  by a chunk, whatever the trace's length; ``gaps`` are read the same way;
* the task methods (:meth:`~TraceReader.calls`, :meth:`~TraceReader.call_tree`,
  :meth:`~TraceReader.hot_edges`, :meth:`~TraceReader.coverage`,
  :meth:`~TraceReader.history`, :meth:`~TraceReader.to_arrow`, ...) each go over the
  file in one streaming pass (:mod:`branchtrace.api_tasks`, :mod:`branchtrace.api_frames`),
  as the commands do: memory grows with distinct edges, blocks or stacks, not with
  branches.

Use it as a context manager (``with branchtrace.open(path) as t:``): :meth:`close`
lets go of the file's chunks and of what was decoded.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from .api_types import CallNode, Column, HistoryKind, HotEdge, ProfileFormat
from .errors import UnknownThreadError, UsageError
from .model import Gap
from .trace import Trace
from .tracefile import TraceFile, scan, to_trace
from .tracefile.stream import CORRUPT, Piece, ThreadStream

if TYPE_CHECKING:
    from .api_tasks import CoverageData
    from .backends import Target
    from .recorder import RecordConfig, RecordListener
    from .snapshots import Snapshots

#: The fields of a Trace that hold branches: decoded from the file on first use.
_DECODED = ("threads", "chunk_times")
#: Branches per piece :meth:`TraceReader.iter_branches` yields at most, by default.
CHUNK = 1 << 16


class TraceReader(Trace):
    """A trace file, read lazily. Made by :func:`branchtrace.open`."""

    def __new__(cls, path: str | os.PathLike[str] | None = None, **fields: Any
                ) -> TraceReader:
        """``TraceReader(path)``; called with a Trace's fields instead (as
        ``dataclasses.replace(reader, ...)`` does), a :class:`Trace` in memory."""
        if path is None and fields:
            return Trace(**fields)  # type: ignore[return-value]
        return super().__new__(cls)

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Scan the trace file at ``path`` (a one-line
        :class:`~branchtrace.TraceFormatError` when it cannot be read at all)."""
        tf = scan(path)
        meta = to_trace(tf, decode=False)
        for f in dataclasses.fields(Trace):
            if f.init and f.name not in _DECODED and f.name not in ("gaps", "lost"):
                setattr(self, f.name, getattr(meta, f.name))
        self._views: dict[int, Trace] = {}
        #: the trace file
        self.path = Path(path)
        self._tf: TraceFile | None = tf
        self._meta = meta                  # everything but the branches (empty arrays)
        self._held: dict[str, Any] = {}    # the decoded fields (or what was assigned)
        self._streamed_gaps: list[Gap] | None = None
        self._lost: dict[int, int] | None = None
        self._edges: dict[int, np.ndarray] = {}

    # ---- the context manager -----------------------------------------------------------

    def __enter__(self) -> TraceReader:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Let go of the file's chunks and of the decoded branches. What is small
        (processes, modules, exit, notes) stays readable; branches do not."""
        self._tf = None
        self._held.clear()
        self._edges.clear()
        self._views.clear()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._tf is None

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("decoded" if self._held else "not decoded")
        return (f"TraceReader({str(self.path)!r}, backend={self.backend!r}, "
                f"threads={self.tids}, {state})")

    # ---- the Trace fields, decoded on first use ----------------------------------------

    def _file(self) -> TraceFile:
        if self._tf is None:
            raise UsageError(f"the trace reader of {self.path} is closed")
        return self._tf

    def decode(self) -> TraceReader:
        """Decode every branch of every thread into memory now (what reading
        ``threads`` does on first use), and return the reader."""
        if "threads" not in self._held:
            full = to_trace(self._file())
            self._held.setdefault("chunk_times", full.chunk_times)
            self._held.setdefault("gaps", full.gaps)
            self._held["threads"] = full.threads
            self.notes.extend(n for n in full.notes if n not in self.notes)
        return self

    def _field(self, name: str) -> Any:
        if name not in self._held:
            self.decode()
        return self._held[name]

    @property
    def threads(self) -> dict[int, np.ndarray]:
        """tid -> the thread's branches (decodes the whole trace on first use)."""
        value: dict[int, np.ndarray] = self._field("threads")
        return value

    @threads.setter
    def threads(self, value: dict[int, np.ndarray]) -> None:
        self._held["threads"] = value

    @property
    def chunk_times(self) -> dict[int, np.ndarray]:
        """tid -> when its chunks were recorded (decodes the whole trace on first use)."""
        value: dict[int, np.ndarray] = self._field("chunk_times")
        return value

    @chunk_times.setter
    def chunk_times(self, value: dict[int, np.ndarray]) -> None:
        self._held["chunk_times"] = value

    @property
    def gaps(self) -> list[Gap]:
        """Where records are missing, as values. Read in one streaming pass over the
        file when the branches are not decoded (memory bounded by a chunk)."""
        if "gaps" in self._held:
            value: list[Gap] = self._held["gaps"]
            return value
        if self._streamed_gaps is None:
            tf = self._file()
            found = [g for t in self.tids for g in ThreadStream(tf, t) if isinstance(g, Gap)]
            found += [Gap(g.tid, g.index, g.count, g.reason) for g in tf.gaps
                      if g.tid not in self._meta.threads]
            self._streamed_gaps = found
        return self._streamed_gaps

    @gaps.setter
    def gaps(self, value: list[Gap]) -> None:
        self._held["gaps"] = value

    @property
    def lost(self) -> dict[int, int]:
        """tid -> records lost: what the recorder lost, the file's holes, and the chunks
        that do not decompress (so known once :attr:`gaps` has read the chunks: reading
        ``lost`` reads them, in one streaming pass, if nothing has yet)."""
        if "lost" in self._held:
            value: dict[int, int] = self._held["lost"]
            return value
        if self._lost is not None:
            return self._lost
        if self.closed and self._streamed_gaps is None:
            return dict(self._meta.lost)      # the chunks can no longer be read
        # the chunks found damaged on reading are CORRUPT gaps the scan did not know of
        extra: Counter[int] = Counter()
        for g in self.gaps:
            if g.reason == CORRUPT:
                extra[g.tid] += g.count
        for g in self._meta.gaps:
            if g.reason == CORRUPT:
                extra[g.tid] -= g.count
        self._lost = {tid: n + extra[tid] for tid, n in self._meta.lost.items()}
        return self._lost

    @lost.setter
    def lost(self, value: dict[int, int]) -> None:
        self._held["lost"] = value

    # ---- threads and their branches, streamed ------------------------------------------

    @property
    def tids(self) -> list[int]:
        """The recorded threads, in the order the file first names them (no decoding)."""
        return list(self._meta.threads)

    def _tids(self, tid: int | None) -> list[int]:
        if tid is None:
            return self.tids
        if tid not in self._meta.threads:
            known = ", ".join(map(str, self.tids)) or "none"
            raise UnknownThreadError(f"no thread {tid} in {self.path.name} (its threads: "
                                     f"{known})")
        return [tid]

    def branches(self, tid: int | None = None) -> np.ndarray:
        """The branches of thread ``tid`` (default: the first), oldest first: decodes
        the whole trace on first use (:meth:`iter_branches` does not). Unlike a
        :class:`Trace` in memory, a tid the file does not have raises
        :class:`~branchtrace.UnknownThreadError` instead of giving an empty array."""
        if tid is not None:
            self._tids(tid)
        return super().branches(tid)

    def iter_branches(self, tid: int | None = None, chunk: int = CHUNK
                      ) -> Iterator[Piece | Gap]:
        """The branches of thread ``tid`` (of every thread, one after the other, when
        None), oldest first, as :class:`~branchtrace.Piece` values of at most ``chunk``
        branches (``piece.branches``: a :data:`~branchtrace.BRANCH_DTYPE` array;
        ``piece.index``: the first one's place in the thread), with a
        :class:`~branchtrace.Gap` where records are missing. Block ids are paired
        across the file's chunks, never across a gap. Memory is bounded by a chunk of
        the file (a few MB) whatever the trace's length. Raises
        :class:`~branchtrace.UnknownThreadError` for a tid the trace does not have."""
        if chunk < 1:
            raise UsageError(f"chunk must be at least 1, not {chunk}")
        tf = self._file()
        for t in self._tids(tid):
            for item in ThreadStream(tf, t):
                if isinstance(item, Gap):
                    yield item
                    continue
                b = item.branches
                for lo in range(0, len(b), chunk):
                    yield Piece(t, item.index + lo, b[lo:lo + chunk], item.first_ns,
                                item.last_ns)

    def without_branches(self) -> Trace:
        """The trace with every field but the branches (its threads' arrays are empty):
        processes, modules, symbolizers, for the analyses that read the branches from
        the file themselves. Decodes nothing."""
        meta = self._meta
        if len(meta.processes) == 1:     # the reader's own modules (a caller may set them)
            meta.modules, meta._symbolizer = self.modules, self.symbolizer
        return meta

    def view_of(self, tid: int) -> Trace:
        """:meth:`without_branches` of the process thread ``tid`` belongs to: its
        modules and symbolizer. Decodes nothing."""
        self._tids(tid)
        base = self.without_branches()
        return base if len(base.processes) == 1 else base.for_pid(base.process_of(tid).pid)

    def edges(self, tid: int) -> np.ndarray:
        """The edge table of thread ``tid``: each distinct (from_ip, to_ip, kind) and
        how often it was taken (``EDGE_COUNT_DTYPE``), counted in one pass over the
        file (kept for the next question)."""
        if tid not in self._edges:
            from .tracefile.counts import count_thread

            self._edges[tid] = count_thread(self._file(), self._tids(tid)[0]).edges
        return self._edges[tid]

    # ---- the tasks -------------------------------------------------------------------

    def calls(self, function: str, tid: int | None = None) -> int:
        """How many times ``function`` was called (calls into it, at its start or
        anywhere in it) by thread ``tid``, or by every thread. ``function`` is a symbol
        name (C++: with or without its parameters). Raises
        :class:`~branchtrace.UnknownFunctionError` when no module of the process defines
        it (0 means it is there and was never called), and
        :class:`~branchtrace.UnknownThreadError` for an unknown tid."""
        from .api_tasks import count_calls

        tids = self._tids(tid)
        return sum(count_calls([(self.edges(t), self.view_of(t)) for t in tids], function))

    def calls_per_thread(self, function: str) -> dict[int, int]:
        """:meth:`calls` of every thread: tid -> calls to ``function`` (the same
        errors)."""
        from .api_tasks import count_calls

        tids = self.tids
        counts = count_calls([(self.edges(t), self.view_of(t)) for t in tids], function)
        return dict(zip(tids, counts))

    def hot_edges(self, n: int = 10, tid: int | None = None) -> list[HotEdge]:
        """The ``n`` most taken branches (from, to) of thread ``tid`` or of every
        thread (each process symbolized with its own modules), most taken first."""
        from .api_tasks import hottest

        tids = self._tids(tid)
        return hottest([(self.edges(t), self.view_of(t)) for t in tids], n)

    def call_tree(self, tid: int) -> CallNode:
        """Thread ``tid``'s calling contexts as a tree: the root stands for the thread
        (``function`` is ``"thread TID"``); each node is a function reached through its
        parents, with the branches taken in it (``branches``) and under it (``total``).
        Streamed from the block ids of a stalker trace; a ptrace trace's thread is
        decoded into memory (they are small)."""
        from .api_tasks import call_tree

        self._tids(tid)
        return call_tree(self, tid)

    def coverage(self, pid: int | None = None) -> CoverageData:
        """What code ran: per source file the lines that ran (see
        :class:`~branchtrace.CoverageData`), over every process or process ``pid``;
        counted in one pass over the file, as ``branchtrace coverage`` does."""
        from .api_tasks import coverage

        return coverage(self, self._file(), pid)

    def history(self, kind: HistoryKind = "calls", **options: Any) -> str:
        """The text of ``branchtrace history`` (``kind``: ``"calls"`` or ``"insns"``),
        with its options as keywords: see :meth:`write_history`."""
        import io

        out = io.StringIO()
        self.write_history(out, kind, **options)
        return out.getvalue()

    def write_history(self, out: IO[str], kind: HistoryKind = "calls", *,
                      tid: int | None = None, pid: int | None = None,
                      last: int | None = None, range: tuple[int, int | None] | None = None,
                      function: str | None = None, lines: bool = False,
                      insn_ranges: bool = False, indent: bool = True,
                      source: bool = False) -> None:
        """Write ``branchtrace history`` to ``out``, streamed (bounded memory): the
        function call history (``kind="calls"``; ``lines``, ``insn_ranges``,
        ``indent``, ``function``) or the instruction history (``"insns"``;
        ``source``), of thread ``tid`` / process ``pid`` or all, the ``last`` N lines or
        the lines numbered ``range=(FIRST, LAST)`` (LAST None: to the end)."""
        from .api_tasks import HistoryOptions, write_history

        write_history(self.without_branches(), self._file(), out, HistoryOptions(
            kind, tid, pid, last, range, function, lines, insn_ranges, indent, source))

    def profile(self, output: str, format: ProfileFormat = "collapsed") -> list[str]:
        """Write the profile ``branchtrace profile --format FORMAT -o OUTPUT`` writes
        (``"-"``: stdout): collapsed stacks (streamed from a stalker trace's block ids),
        speedscope or perfetto JSON (from the decoded trace). Returns its warnings."""
        from .api_tasks import write_profile

        return write_profile(self, output, format)

    # ---- tables ----------------------------------------------------------------------

    def iter_batches(self, tid: int | None = None, columns: Sequence[Column] = (),
                     chunk: int = CHUNK) -> Iterator[Any]:
        """The branches as ``pyarrow.RecordBatch`` values, a chunk at a time (bounded
        memory): see :meth:`to_arrow` for the columns. Needs pyarrow (the ``arrow``
        extra)."""
        from .api_frames import batches

        return batches(self, self._tids(tid), tuple(columns), chunk)

    def to_arrow(self, tid: int | None = None, columns: Sequence[Column] = ()) -> Any:
        """The branches as a ``pyarrow.Table``: ``pid``, ``tid``, ``seq`` (the branch's
        index in its thread), ``from_ip``, ``to_ip`` (uint64), ``kind`` (dictionary:
        ``call``, ``return``, ...) and, when ``columns`` names them, ``from_function``,
        ``to_function`` (and ``_module``, ``_file``, ``_line``) and ``time`` (estimated,
        ns). Gaps are not rows (:attr:`gaps`). For big traces, :meth:`iter_batches`."""
        from .api_frames import arrow_schema

        import pyarrow as pa

        return pa.Table.from_batches(list(self.iter_batches(tid, columns)),
                                     schema=arrow_schema(tuple(columns)))

    def to_pandas(self, tid: int | None = None, columns: Sequence[Column] = ()) -> Any:
        """:meth:`to_arrow` as a ``pandas.DataFrame`` (``kind`` and the symbol columns
        categorical). Needs pandas and pyarrow (the ``pandas`` extra)."""
        from .api_frames import for_pandas

        return for_pandas(self.to_arrow(tid, columns))


def open_reader(path: str | os.PathLike[str]) -> TraceReader:
    """:func:`branchtrace.open`."""
    return TraceReader(path)


def record(target: Target, config: RecordConfig | None = None,
           on_start: Callable[..., None] | None = None, *,
           output: str | os.PathLike[str] | None = None, keep: int | None = None,
           listener: RecordListener | None = None,
           snapshots: Snapshots | None = None) -> Trace:
    """Trace ``target`` until it ends (or is detached) and return what was recorded.

    Without ``output``: a :class:`Trace` holding every branch in memory. With
    ``output``: the trace is written to that file while the program runs, and the
    result is a :class:`TraceReader` of the file: every branch, decoded when asked.
    With ``output`` and ``keep=N``: a :class:`Trace` in memory holding only the newest
    ``N`` branches per thread; the ones it does not hold are a :class:`Gap` at its
    start (``reason`` says the file has them), counted in ``lost``, and a note says so.
    ``on_start(backend, reasons)``, ``listener``, ``snapshots`` (a ring-mode run's
    snapshots, :class:`branchtrace.snapshots.Snapshots`): see
    :func:`branchtrace.recorder.record`."""
    from .recorder import RecordConfig
    from .recorder import record as engine

    config = config if config is not None else RecordConfig()
    if output is None or keep is not None:
        return engine(target, config, on_start, output=output, keep=keep,
                      listener=listener, mark_dropped=True, snapshots=snapshots)
    engine(target, config, on_start, output=output, keep=0, listener=listener,
           snapshots=snapshots)
    return TraceReader(output)
