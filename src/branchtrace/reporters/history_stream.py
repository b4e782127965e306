"""GDB's call and instruction history written as a trace file is decoded.

:func:`~.history.render_calls` and :func:`~.history.render_insns` work on a thread's
whole branch array: memory grows with the branches (12 GB for a 150M-branch thread) and
nothing is written before all of it is decoded. The functions here take a thread's
branches piece by piece (``branches_of(tid)``: branch arrays and gaps, in order, as
:func:`branchtrace.tracefile.stream.pieces` gives them) and write each line as soon as
it is known, a window of :data:`WINDOW` branches at a time: a closed pipe (``| head``)
stops them at once, and memory grows with the call depth and the distinct runs, never
with the branches. Their output is that of the whole-array functions, byte for byte,
with one exception: without ``last``, the indentation of the lines written before a
thread returns out of the frame it started in (:mod:`branchtrace.analysis.callstream`).

Numbers count from the thread's start: ``last=N`` reads it all, keeping N lines, unless
``resume`` says where a thread may be read from (history_tail.py: the segments and
instructions before its last chunks counted without decoding them).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO

import numpy as np

from ..analysis import CodeReader, FunctionIndex, Runs
from ..analysis.callstream import CallStream, Segments
from ..analysis.code import Instruction
from ..model import Gap
from ..trace import Trace
from .base import pick_threads
from .history import _BATCH, _Sources, _write_rows, gap_text, segment_labels

#: Branches given to the stack pass (and runs decoded) at a time: the first lines come
#: out quickly. Tests lower it.
WINDOW = 1 << 16

Source = Callable[[int], Iterable[np.ndarray | Gap]]


@dataclass(frozen=True)
class Resume:
    """A thread read from a point on (``history --last``): the stack pass there, the
    branches from there, and for /i the instructions before them and the address the
    branch before them went to."""

    calls: CallStream
    parts: Iterable[np.ndarray | Gap]
    instructions: int
    before: int


#: Per thread, where to start reading it (None: from its start), given the function
#: index and code reader of the report, and whether instruction numbers are needed.
Resumer = Callable[[int, FunctionIndex, CodeReader, bool], Resume | None]


def windows(parts: Iterable[np.ndarray | Gap]) -> Iterable[np.ndarray | Gap]:
    """The parts, with branch arrays cut to at most :data:`WINDOW` branches."""
    for part in parts:
        if isinstance(part, Gap):
            yield part
        else:
            for lo in range(0, len(part), WINDOW):
                yield part[lo:lo + WINDOW]


def held(parts: Iterable[np.ndarray | Gap]) -> Iterable[tuple[np.ndarray | Gap, bool]]:
    """The parts, each with whether it is the last branch array (a window is handed
    out once the next one, or the end, is seen; gaps as they come)."""
    waiting: np.ndarray | None = None
    gaps: list[Gap] = []
    for part in windows(parts):
        if isinstance(part, Gap):
            if waiting is None:
                yield part, False
            else:
                gaps.append(part)
            continue
        if waiting is not None:
            yield waiting, False
            for g in gaps:
                yield g, False
            gaps = []
        waiting = part
    if waiting is not None:
        yield waiting, True
    for g in gaps:
        yield g, False


def stream_calls(trace: Trace, branches_of: Source, out: IO[str], *, tid: int | None = None,
                 last: int | None = None, indent: bool = True, insn_ranges: bool = False,
                 lines: bool = False, resume: Resumer | None = None) -> None:
    """:func:`~.history.render_calls` of a trace whose branches come piece by piece;
    ``resume``: with ``last``, where each thread may be read from (see :class:`Resume`)."""
    tids = pick_threads(trace, tid)
    functions = FunctionIndex(trace.symbolizer)
    reader = CodeReader(trace.symbolizer)
    cache: dict[int, list[Instruction] | None] = {}
    for t in tids:
        if len(tids) > 1:
            out.write(f"thread {t}:\n")
        start = resume(t, functions, reader, insn_ranges) \
            if resume is not None and last is not None else None
        calls = CallStream(functions, reader) if start is None else start.calls
        parts = branches_of(t) if start is None else start.parts
        # with --last: the last segments as data, made into lines at the end, when the
        # shallowest depth of the whole thread is known (the same indentation as
        # render_calls): (segments, their /i /l text, the shallowest depth then)
        kept: deque[tuple[Segments, list[str] | None, int]] = deque()
        columns = _Columns(trace, t, reader, cache, insn_ranges, lines) \
            if insn_ranges or lines else None
        if columns is not None and start is not None:
            columns.base, columns.before = start.instructions, start.before

        def lines_of(segments: Segments, extra: list[str] | None) -> str:
            labels = segment_labels(segments, functions, indent)
            numbers = range(segments.number, segments.number + len(segments))
            if extra is None:
                return "".join(map("{}\t{}\n".format, numbers, labels))
            return "".join(map("{}\t{}{}\n".format, numbers, labels, extra))

        def write(segments: Segments, extra: list[str] | None) -> None:
            if not len(segments):
                return
            if last is None:
                out.write(lines_of(segments, extra))
                return
            if len(segments) > last:                 # the others are not shown
                cut = len(segments) - last
                extra = extra[cut:] if extra is not None else None
                segments = _tail(segments, cut)
            kept.append((segments, extra, calls.lowest))
            while sum(len(k[0]) for k in kept) - len(kept[0][0]) >= last:
                kept.popleft()

        if columns is None:
            for part in windows(parts):
                if isinstance(part, Gap):
                    calls.gap(part)
                else:
                    write(calls.branches(part), None)
            write(calls.finish(), None)
        else:
            final: tuple[np.ndarray, Segments] | None = None
            for part, is_last in held(parts):
                if isinstance(part, Gap):
                    calls.gap(part)
                    continue
                done = calls.branches(part)
                if is_last:
                    final = part, done          # the gaps after it come first
                    continue
                write(done, columns.window(part, calls.n - len(part), False, done,
                                           calls.pending))
            more = calls.finish()
            if final is None:
                write(more, columns.window(None, calls.n, True, more, None))
            else:
                done = _joined(final[1], more)
                write(done, columns.window(final[0], calls.n - len(final[0]), True, done, None))
        if last is not None:
            held_back = sum(len(k[0]) for k in kept) - last
            for segments, extra, lowest in kept:
                if held_back > 0:
                    extra = extra[held_back:] if extra is not None else None
                    segments, held_back = _tail(segments, held_back), 0
                out.write(lines_of(_deeper(segments, lowest - calls.lowest), extra))


def _tail(s: Segments, cut: int) -> Segments:
    """The segments after the first ``cut``."""
    return Segments(s.number + cut, s.function[cut:], s.depth[cut:], s.gap[cut:],
                    s.address[cut:], s.first[cut:], s.last[cut:])


def _deeper(s: Segments, shift: int) -> Segments:
    """The segments, ``shift`` levels deeper (a gap's label has no indentation)."""
    if not shift:
        return s
    return Segments(s.number, s.function, s.depth + shift, s.gap, s.address, s.first, s.last)


def _joined(a: Segments, b: Segments) -> Segments:
    if not len(a):
        return b
    if not len(b):
        return a
    return Segments(a.number, np.concatenate([a.function, b.function]),
                    np.concatenate([a.depth, b.depth]), a.gap + b.gap,
                    np.concatenate([a.address, b.address]), np.concatenate([a.first, b.first]),
                    np.concatenate([a.last, b.last]))


class _Columns:
    """/i (``inst FIRST,LAST``) and /l (``at FILE:FIRST,LAST``) of segments whose runs
    come a window at a time. A segment's runs may span windows: what is known of the
    segment under way (the instructions before its first run, its file and lines so
    far) is carried to the next window."""

    def __init__(self, trace: Trace, tid: int, reader: CodeReader,
                 cache: dict[int, list[Instruction] | None], insn_ranges: bool,
                 lines: bool) -> None:
        self.trace, self.tid, self.reader, self.cache = trace, tid, reader, cache
        self.insn_ranges, self.lines = insn_ranges, lines
        self.base = 0                     # instructions before the window
        self.before: int | None = None    # the target of the last branch seen
        self.gap_at: set[int] = set()
        self.open_first = -1              # the segment under way: its first run,
        self.open_before = 0              # the instructions before it,
        self.open_file: str | None = None  # its file, lowest and highest line so far
        self.open_lo = self.open_hi = 0

    def window(self, b: np.ndarray | None, off: int, final: bool, done: Segments,
               pending: int | None) -> list[str]:
        """The /i /l text of the segments ``done`` (finished by branches ``b``, the
        window from branch ``off``; ``final``: the thread's last), given the first run
        of the segment under way after it (``pending``)."""
        for g in done.gap:
            if g is not None:
                self.gap_at.add(g.index)
        m = len(b) if b is not None else 0
        # before[r - off]: the instructions before run r, for r in off .. off + m (+ 1)
        if b is not None and m:
            runs = Runs.window(self.trace, self.tid, b, before=self.before,
                               gap_at=[k - off for k in self.gap_at if off <= k <= off + m],
                               tail=final, base=self.base, reader=self.reader, cache=self.cache)
            counts = runs.counts
            self.before = int(b["to_ip"][-1])
        else:
            runs, counts = None, np.zeros(1, dtype=np.int64)
        before = np.empty(m + 2, dtype=np.int64)
        before[0] = self.base
        np.cumsum(counts[:m + 1], out=before[1:])
        before[1:] += self.base
        span = m + 1 if final else m       # the runs of this window
        files = self._files(runs, span, off, done, pending) if self.lines else None
        out: list[str] = []
        first, last = done.first.tolist(), done.last.tolist()
        for i, (a, z) in enumerate(zip(first, last)):
            text = ""
            if self.insn_ranges and z >= a:
                x = (self.open_before if a < off else int(before[a - off])) + 1
                y = int(before[z + 1 - off])
                if y >= x:
                    text = f"\tinst {x},{y}"
            if files is not None and files[i]:
                text += f"\tat {files[i]}"
            out.append(text)
        if pending is not None and pending >= off:
            self.open_before = int(before[pending - off])
        self.base = int(before[m])
        self.gap_at = {k for k in self.gap_at if k > off + m}
        return out

    def _files(self, runs: Runs | None, span: int, off: int, done: Segments,
               pending: int | None) -> list[str]:
        """``fib.c:5,6`` per segment of ``done`` ("" when none): as
        :func:`~.history._segment_lines`, over the runs of every window it spans."""
        out = [""] * len(done)
        carried = (self.open_file, self.open_lo, self.open_hi)   # the segment under way
        real = [i for i, (a, z) in enumerate(zip(done.first.tolist(), done.last.tolist()))
                if z >= a]
        # the segments holding runs of this window, in order, and where theirs start
        owners: list[int] = [i for i in real if int(done.last[i]) >= off]
        starts = [max(int(done.first[i]) - off, 0) for i in owners]
        carries = pending is not None and pending < off + span
        if carries:
            assert pending is not None
            owners.append(-1)
            starts.append(max(pending - off, 0))
        results: list[tuple[str | None, int, int]] = []
        if runs is not None and span and owners:
            i = owners[0]
            results = self._reduce(runs, span, starts, pending is not None and pending < off
                                   if i == -1 else int(done.first[i]) < off)
        elif owners:
            results = [(None, 0, 0)] * len(owners)
        found: dict[int, tuple[str | None, int, int]] = {}
        for k, (i, r) in enumerate(zip(owners, results)):
            continued = starts[k] == 0 and (i == -1 and pending is not None and pending < off
                                            or i >= 0 and int(done.first[i]) < off)
            if continued:
                r = self._merge(r)
            if i == -1:
                self.open_first, (self.open_file, self.open_lo, self.open_hi) = pending or 0, r
            else:
                found[i] = r
        for i in real:
            if i not in found and int(done.first[i]) < off:   # it ended with the last window
                found[i] = carried
        if not carries and pending is not None and pending >= off + span:
            self.open_first, self.open_file, self.open_lo, self.open_hi = pending, None, 0, 0
        for i, (name, lo, hi) in found.items():
            if name is not None:
                base = os.path.basename(name)
                out[i] = f"{base}:{lo}" if lo == hi else f"{base}:{lo},{hi}"
        return out

    def _merge(self, r: tuple[str | None, int, int]) -> tuple[str | None, int, int]:
        """What the segment under way had, with what this window adds to it."""
        if self.open_file is None:
            return r
        return self.open_file, min(self.open_lo, r[1]), max(self.open_hi, r[2])

    def _reduce(self, runs: Runs, span: int, starts: list[int],
                continued: bool) -> list[tuple[str | None, int, int]]:
        """Per group of runs (from each of ``starts``): its file (the first with a
        line; for a group that continues a segment with a file, that file), lowest and
        highest line in it."""
        file, lo, hi, names = runs.lines()
        file, lo, hi = file[:span], lo[:span], hi[:span]
        st = np.array(starts, dtype=np.int64)
        pos = np.where(file >= 0, np.arange(span), span)
        first_with = np.minimum.reduceat(pos, st)
        seg_file = np.where(first_with < span, file[np.minimum(first_with, span - 1)], -1)
        if continued and self.open_file is not None:
            seg_file[0] = names.index(self.open_file) if self.open_file in names else -2
        lengths = np.diff(np.append(st, span))
        own = file == np.repeat(seg_file, lengths)
        big = np.iinfo(np.int32).max
        seg_lo = np.minimum.reduceat(np.where(own, lo, big), st)
        seg_hi = np.maximum.reduceat(np.where(own, hi, 0), st)
        out: list[tuple[str | None, int, int]] = []
        for k, (f, a, z) in enumerate(zip(seg_file.tolist(), seg_lo.tolist(), seg_hi.tolist())):
            if f >= 0:
                out.append((names[f], a, z))
            elif k == 0 and continued and self.open_file is not None:
                out.append((self.open_file, big, 0))     # no run of it here
            else:
                out.append((None, 0, 0))
        return out


#: Per thread, where ``--insns --last`` may read it from: (its branches from a point on,
#: the instructions before them, the address the branch before them went to), or None.
InsnResumer = Callable[[int, CodeReader], tuple[Iterable[np.ndarray | Gap], int, int] | None]


def stream_insns(trace: Trace, branches_of: Callable[[int], Iterable[np.ndarray | Gap]],
                 out: IO[str], *, tid: int | None = None, last: int | None = None,
                 source: bool = False, resume: InsnResumer | None = None) -> None:
    """:func:`render_insns` of a trace whose branches come piece by piece
    (``branches_of``: see :func:`stream_calls`): the runs are decoded a window at a time
    (each distinct run once, kept for the next windows) and written as they come;
    ``last``: only the instructions of each window that may be among the last N are
    made into lines, the last N kept and written at the end of the thread; ``resume``:
    with ``last``, where each thread may be read from."""
    tids = pick_threads(trace, tid)
    reader = CodeReader(trace.symbolizer)
    sources = _Sources() if source else None
    cache: dict[int, list[Instruction] | None] = {}
    for t in tids:
        if len(tids) > 1:
            out.write(f"thread {t}:\n")
        stream = _InsnStream(trace, t, out, last, sources, reader, cache)
        start = resume(t, reader) if resume is not None and last is not None else None
        if start is None:
            stream.run(branches_of(t))
        else:
            stream.base, stream.before = start[1], start[2]
            stream.run(start[0])


class _InsnStream:
    """The instruction history of one thread, window by window."""

    def __init__(self, trace: Trace, tid: int, out: IO[str], last: int | None,
                 sources: _Sources | None, reader: CodeReader,
                 cache: dict[int, list[Instruction] | None]) -> None:
        self.trace, self.tid, self.out, self.last = trace, tid, out, last
        self.sources, self.reader, self.cache = sources, reader, cache
        self.gaps: dict[int, list[Gap]] = {}       # by the run they come before
        self.state: list[object] = [None, None]    # the last (file, line) shown
        self.kept: deque[tuple[int, int, int, str]] = deque(maxlen=last or 1)
        self.base = 0                              # instructions before the window
        self.before: int | None = None             # the target of the branch before it

    def run(self, parts: Iterable[np.ndarray | Gap]) -> None:
        waiting: tuple[np.ndarray, int] | None = None   # the window whose tail is not known
        n = 0
        for part in parts:
            if isinstance(part, Gap):
                self.gaps.setdefault(n, []).append(part)
                continue
            for lo in range(0, len(part), WINDOW):
                if waiting is not None:
                    self._window(*waiting, tail=False)
                waiting = (part[lo:lo + WINDOW], n)
                n += len(waiting[0])
        tail_count = 0
        if waiting is not None:
            tail_count = self._window(*waiting, tail=True)
        if self.last is not None:
            _write_rows(self.trace, list(self.kept), self.gaps, self.out, self.sources,
                        [None, None])
        for g in self.gaps.get(n, ()) if not tail_count else ():
            self.out.write(f"{gap_text(g)}\n")

    def _window(self, b: np.ndarray, off: int, *, tail: bool) -> int:
        """Write (or keep) the instructions of the runs that end with ``b`` (branch
        ``off`` first), and the tail's when ``tail``; the tail's instruction count."""
        m = len(b)
        runs = Runs.window(self.trace, self.tid, b, before=self.before,
                           gap_at=[k - off for k in self.gaps if off <= k <= off + m],
                           tail=tail, base=self.base, reader=self.reader, cache=self.cache)
        counts, first = runs.counts, runs.first_number
        total = int(counts.sum())
        r0, skip = 0, 0
        if self.last is not None:
            skip = max(0, total - self.last)          # instructions of the window not kept
            r0 = int(np.searchsorted(first + counts - 1 - self.base, skip + 1)) if skip else 0
        for lo in range(r0, m + 1, _BATCH):
            rows: list[tuple[int, int, int, str]] = []   # (run, number, address, text)
            for r in range(lo, min(lo + _BATCH, m + 1)):
                number = int(first[r])
                for insn in runs.instructions(r):
                    if number > self.base + skip:
                        rows.append((off + r, number, insn.address, insn.text))
                    number += 1
            if self.last is not None:
                self.kept.extend(rows)
            else:
                _write_rows(self.trace, rows, self.gaps, self.out, self.sources, self.state)
        self.base += total
        self.before = int(b["to_ip"][-1])
        return int(counts[m])
