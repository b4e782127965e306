"""The frames of a thread as they open and close, in order, a batch at a time.

The timeline formats (perfetto's complete events, speedscope's open and close events)
need every frame of the rebuilt call stacks with where it opens and closes. Two
sources give them as the same :class:`FrameRows`, in the same order:

* :func:`block_frames`: a trace file's block ids chunk by chunk, through the compiled
  walk of :mod:`.contexts` (the same stack rules as :func:`~.callstack.call_trace`),
  in memory that grows with the call depth and the distinct blocks, never with the
  branches; times come from a :class:`Clock` that learns each chunk's span as it goes.
* :func:`trace_frames`: :func:`~.callstack.call_trace` of a trace in memory (from/to
  files, built traces), with :class:`~.timeline.Timeline`.

The order is the order things happen: by position, closings before openings, deeper
closings first (what speedscope's evented format needs). One thing cannot be streamed:
when a thread returns out of its bottom frame, call_trace puts a new frame under it
that was "there all along" (opened at position 0). Its closing row says so (position
0), but its opening row comes where the return is, as both sources write it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..model import Gap
from ..trace import Trace
from .callstack import CallTrace, call_trace
from .callstack import _Walk as _CallWalk
from .callstream import CallStream
from .code import CodeReader
from .contexts import BlockFunctions, IdPiece, Walk, drive
from .functions import FunctionIndex
from .timeline import Timeline, ticks


@dataclass(frozen=True, slots=True)
class FrameRows:
    """Frames opening and closing, one row each, in order. Positions are
    :class:`~.callstack.CallTrace`'s (``2 * r`` the start of run ``r``)."""

    function: np.ndarray    # uint64 function key
    at: np.ndarray          # int64: an opening's position; a closing's opening position
    close: np.ndarray       # int64: a closing's position, -1 for an opening
    depth: np.ndarray       # int64 from the thread's first frame (< 0 below it)
    parent: np.ndarray      # int64: for a closing, the opening position of the frame
                            # under it (0 for a bottom frame), else -1

    def __len__(self) -> int:
        return len(self.function)


#: Takes each batch of rows.
FrameSink = Callable[[FrameRows], None]


class Clock:
    """Times of positions of a thread whose branches come chunk by chunk: what
    :class:`~.timeline.Timeline` gives for the whole thread, from the chunks seen so far
    (each chunk's branches spread over its span, as :meth:`Trace.times` does; never
    going back). A chunk with no time (0) takes the time of the one before."""

    def __init__(self, start_time: float, end_time: float) -> None:
        from .timeline import _ns

        start, end = _ns(start_time), _ns(end_time)
        self.start, self.span = start, max(end - start, 0)
        self.real = end > start
        self.note = ("times interpolated over the branch index between the times the "
                     "trace's chunks were drained") if self.real else \
            "the trace has no time span: one microsecond per branch"
        self.n = 0
        self._rows: list[tuple[int, int, int, int]] = []
        self._arrays: tuple[np.ndarray, ...] | None = None

    def add(self, count: int, first_ns: int, last_ns: int) -> None:
        """The next ``count`` branches were recorded between ``first_ns`` and ``last_ns``."""
        if count > 0:
            self._rows.append((self.n, count, first_ns, last_ns))
            self._arrays = None
            self.n += count

    def extend(self, count: int) -> None:
        """The next ``count`` branches belong to the last chunk added."""
        if count > 0 and self._rows:
            lo, n, first, last = self._rows[-1]
            self._rows[-1] = (lo, n + count, first, last)
            self._arrays = None
            self.n += count
        else:
            self.add(count, 0, 0)

    def piece(self, piece: IdPiece, count: int) -> None:
        """:meth:`add` for a piece of block ids (a :data:`.contexts.PieceHook`)."""
        self.add(count, int(getattr(piece, "first_ns", 0)), int(getattr(piece, "last_ns", 0)))

    def _table(self) -> tuple[np.ndarray, ...]:
        if self._arrays is None:
            top = 1 << 62
            rows = np.array(self._rows, dtype=np.int64).reshape(-1, 4)
            lo, count = rows[:, 0], rows[:, 1]
            first = np.minimum(rows[:, 2], top)
            span = np.maximum(np.minimum(rows[:, 3], top) - first, 0)
            known = (rows[:, 2] > 0) | (rows[:, 3] > 0)
            last_value = np.clip(first + span - self.start, 0, self.span)
            last_value = np.where(known, last_value, 0)
            before = np.zeros(len(rows), np.int64)     # the latest time before each chunk
            if len(rows) > 1:
                before[1:] = np.maximum.accumulate(last_value)[:-1]
            self._arrays = (lo, count, first, span, known, before)
        return self._arrays

    def ns(self, positions: np.ndarray) -> np.ndarray:
        """Nanoseconds from the trace start at run positions (run ``p`` starts with branch
        ``p - 1``; ``p`` past the branches seen is the end of the trace)."""
        p = np.asarray(positions, dtype=np.int64)
        if not self.real:
            return np.maximum(p, 0) * 1000
        out = np.zeros(len(p), np.int64)
        i = p - 1
        inside = (i >= 0) & (i < self.n)
        out[p > self.n] = self.span
        if inside.any() and self._rows:
            lo, count, first, span, known, before = self._table()
            ii = i[inside]
            c = np.searchsorted(lo, ii, side="right") - 1
            x = (ii - lo[c] + 1).astype(np.float64)
            value = first[c] + np.round(span[c] * x / count[c]).astype(np.int64) - self.start
            value = np.where(known[c], np.clip(value, 0, self.span), 0)
            out[inside] = np.maximum(value, before[c])
        return out

    def ticks(self, positions: np.ndarray) -> np.ndarray:
        return ticks(self.ns(positions))

    @property
    def end_ns(self) -> int:
        return self.span if self.real else (self.n + 1) * 1000


def _rows(function: np.ndarray, pos: np.ndarray) -> FrameRows:
    return FrameRows(function, pos[:, 0], pos[:, 1], pos[:, 2], pos[:, 3])


def block_frames(table: BlockFunctions, pieces: Iterable[IdPiece], gaps: list[int],
                 clock: Clock, sink: FrameSink, compiled: bool = True,
                 holes: list[tuple[int, int]] | None = None) -> int:
    """Hand the frame rows of one thread (its block ids in ``pieces``, the branch indices
    of its gaps) to ``sink`` as they come, the frames still open at the end closed
    there; ``clock`` learns each piece's span before its rows. ``holes`` gets (branch
    index, records missing) of each piece that comes after missing records. Returns
    the branches."""
    walk = Walk(table, np.array(sorted(gaps), np.int64), compiled,
                lambda f, p: sink(_rows(f, p)))

    def before(piece: IdPiece, count: int) -> None:
        if holes is not None and piece.after_hole:
            holes.append((clock.n, int(getattr(piece, "missing", 0))))
        clock.piece(piece, count)

    drive(walk, pieces, before)
    walk.flush()
    n = walk.branches
    func, opened, depth = walk.open_frames()
    if len(func):
        end = 2 * (n + 1)
        parent = np.zeros(len(func), np.int64)
        parent[1:] = opened[:-1]
        sink(FrameRows(func[::-1].copy(), opened[::-1].copy(), np.full(len(func), end, np.int64),
                       depth[::-1].copy(), parent[::-1].copy()))
    return n


def call_rows(ct: CallTrace) -> FrameRows:
    """The frame rows of a :class:`CallTrace`, in the order :func:`block_frames` gives
    them (depths from the first frame; a frame put under the bottom one shows its
    opening where the return that found it is)."""
    m = len(ct.frame_function)
    if not m:
        e = np.zeros(0, np.int64)
        return FrameRows(np.zeros(0, np.uint64), e, e, e, e)
    depth = ct.frame_depth - ct.frame_depth[0]
    shown = ct.frame_open.copy()
    lowered = np.flatnonzero(ct.frame_open == 0)[1:]           # frame 0 is the first
    if len(lowered):
        real = ~ct.is_gap
        seg_frame, seg_first = ct.seg_frame[real], ct.seg_first[real]
        firsts: dict[int, int] = {}
        for f, r in zip(seg_frame.tolist(), seg_first.tolist()):
            firsts.setdefault(f, r)
        for f in lowered.tolist():
            shown[f] = 2 * firsts.get(f, 0)
    parent = np.where(ct.frame_parent >= 0, ct.frame_open[np.maximum(ct.frame_parent, 0)], 0)
    pos = np.concatenate((shown, ct.frame_close))
    is_open = np.concatenate((np.ones(m, np.int64), np.zeros(m, np.int64)))
    key = np.concatenate((depth, -depth))
    order = np.lexsort((key, is_open, pos))
    function = np.concatenate((ct.frame_function, ct.frame_function))[order]
    at = np.concatenate((shown, ct.frame_open))[order]
    close = np.concatenate((np.full(m, -1, np.int64), ct.frame_close))[order]
    return FrameRows(function, at, close, np.concatenate((depth, depth))[order],
                     np.concatenate((np.full(m, -1, np.int64), parent))[order])


def trace_frames(trace: Trace, tid: int, functions: FunctionIndex, reader: CodeReader
                 ) -> tuple[Timeline, tuple[Gap, ...], FrameRows]:
    """Thread ``tid`` of a trace in memory: its timeline, its gaps, its frame rows."""
    ct = call_trace(trace, tid, functions=functions, reader=reader)
    return Timeline(trace, tid), ct.gaps, call_rows(ct)


class PieceSource:
    """A trace file's threads as decoded branches chunk by chunk (from/to records):
    per thread, its :class:`~branchtrace.tracefile.stream.Piece` values and gaps."""

    def __init__(self, thread: Callable[[int], Iterable[Any]]) -> None:
        self.thread = thread


class _ShownWalk(_CallWalk):
    """call_trace's walk, remembering where each frame found under the bottom one was
    found."""

    def __init__(self) -> None:
        super().__init__({})
        self.shown: dict[int, int] = {}

    def lower(self, func: int, run: int) -> None:
        super().lower(func, run)
        self.shown[len(self.f_func) - 1] = 2 * run + self.half


class _FrameCalls(CallStream):
    """A :class:`CallStream` whose frames become rows: those that opened and closed
    since the last :meth:`harvest`, kept (``ready``) until the clock knows their
    chunk."""

    def __init__(self, functions: FunctionIndex, reader: CodeReader) -> None:
        super().__init__(functions, reader)
        self.walk = self.shown_walk = _ShownWalk()
        self.opened = 0                       # frames whose opening is a row
        self.closed: set[int] = set()         # frames whose closing is a row
        self.ready: list[FrameRows] = []

    def _compact(self) -> None:
        self.harvest()
        super()._compact()
        walk = self.shown_walk
        self.opened = len(walk.f_func)
        self.closed = {i for i, c in enumerate(walk.f_close) if c >= 0}
        walk.shown.clear()

    def harvest(self) -> None:
        walk = self.shown_walk
        m = len(walk.f_func)
        close = np.array(walk.f_close, np.int64)
        shut = [i for i in np.flatnonzero(close >= 0).tolist() if i not in self.closed]
        fresh = list(range(self.opened, m))
        if not shut and not fresh:
            return
        f_open, f_parent = walk.f_open, walk.f_parent
        func = [walk.f_func[i] for i in fresh] + [walk.f_func[i] for i in shut]
        at = [walk.shown.get(i, f_open[i]) for i in fresh] + [f_open[i] for i in shut]
        ends = [-1] * len(fresh) + [int(close[i]) for i in shut]
        depth = [walk.f_depth[i] for i in fresh] + [walk.f_depth[i] for i in shut]
        parent = [-1] * len(fresh) + [f_open[f_parent[i]] if f_parent[i] >= 0 else 0
                                      for i in shut]
        self.opened = m
        self.closed.update(shut)
        self.ready.append(_ordered(np.array(func, np.uint64), np.array(at, np.int64),
                                     np.array(ends, np.int64), np.array(depth, np.int64),
                                     np.array(parent, np.int64)))

    def release(self, sink: FrameSink) -> None:
        for rows in self.ready:
            sink(rows)
        self.ready = []

    def still_open(self, n: int) -> FrameRows:
        """The frames on the stack, closing at the end of the trace (deepest first)."""
        walk = self.shown_walk
        st = walk.st[::-1]
        end = 2 * (n + 1)
        return FrameRows(np.array([walk.f_func[f] for f in st], np.uint64),
                         np.array([walk.f_open[f] for f in st], np.int64),
                         np.full(len(st), end, np.int64),
                         np.array([walk.f_depth[f] for f in st], np.int64),
                         np.array([walk.f_open[walk.f_parent[f]] if walk.f_parent[f] >= 0
                                   else 0 for f in st], np.int64))


def _ordered(function: np.ndarray, at: np.ndarray, close: np.ndarray, depth: np.ndarray,
             parent: np.ndarray) -> FrameRows:
    """Rows in the order things happen: by position, closings first (deeper first),
    then openings (shallower first)."""
    is_open = close < 0
    order = np.lexsort((np.where(is_open, depth, -depth), is_open, np.where(is_open, at, close)))
    return FrameRows(function[order], at[order], close[order], depth[order], parent[order])


def piece_frames(functions: FunctionIndex, reader: CodeReader, items: Iterable[Any],
                 clock: Clock, sink: FrameSink) -> list[Gap]:
    """Hand the frame rows of one thread, given as decoded pieces and gaps in order
    (tracefile.stream.ThreadStream), to ``sink`` as they come, the frames still open at
    the end closed there; ``clock`` learns each chunk's span before its rows. Returns
    the thread's gaps."""
    calls = _FrameCalls(functions, reader)
    gaps: list[Gap] = []
    last: tuple[int, int] | None = None
    split = False                 # a gap of the file came since the last piece
    for item in items:
        if isinstance(item, Gap):
            calls.gap(item)
            gaps.append(item)
            split = split or item.reason != "corrupt chunk"
            continue
        b = item.branches
        span = (int(item.first_ns), int(item.last_ns))
        if split and span == last:
            clock.extend(len(b))             # the rest of a chunk a gap cut in two
        else:
            calls.release(sink)              # the chunks before are complete
            clock.add(len(b), *span)
        last, split = span, False
        calls.branches(b)
        calls.harvest()
    calls.finish()
    calls.harvest()
    calls.release(sink)
    rest = calls.still_open(calls.n)
    if len(rest):
        sink(rest)
    return gaps
