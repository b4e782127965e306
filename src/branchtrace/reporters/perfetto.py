"""A timeline for ui.perfetto.dev (and chrome://tracing): Chrome trace-event JSON.

One complete event (``"ph": "X"``) per call, that is per frame of the rebuilt call
stacks, on one track per thread, in microseconds from the start of the trace. The
branches carry no time: each branch's time comes from the span of the chunk it was
recorded in (:class:`~branchtrace.analysis.timeline.Timeline`, or chunk by chunk
:class:`~branchtrace.analysis.framestream.Clock`), so durations are estimates,
proportional to branches taken within a chunk. Gaps are instant events. Times are
multiples of 1/1024 us written exactly (analysis/timeline.py), so ``ts + dur`` in a
reader's floating point is the end meant, and a call that ends where the next starts
never seems to overlap it. The layout::

    {"traceEvents": [
      {"name": "process_name", "ph": "M", "pid": P, "args": {"name": "fib"}},
      {"name": "thread_name", "ph": "M", "pid": P, "tid": T, "args": {"name": "fib 123"}},
      {"name": "fib", "cat": "function", "ph": "X", "ts": 3.5, "dur": 0.25,
       "pid": P, "tid": T, "args": {"depth": 1}},
      ...
      {"name": "main", "cat": "function", "ph": "X", "ts": 0, "dur": 812.3447265625,
       "pid": P, "tid": T, "args": {"depth": 0}},
      ...],
     "displayTimeUnit": "ns",
     "otherData": {"program": "...", "backend": "...", "clock": "..."}}

Events are written as the frames close (callees before their callers), so a trace of
any length streams: from a block-id file (``source``) the frames come chunk by chunk
and memory grows with the call depth, not with the trace. Importers sort events by
``ts``; for equal ``ts`` they keep the file's order (Perfetto and speedscope nest the
first as the parent), so a frame that starts at the same time as its caller is held
back and written right after it. ``depth`` counts from the thread's first frame: a
thread that returns out of the frame it started in (a trace that begins inside a
call) has frames below it, at negative depths.
"""

from __future__ import annotations

import json
import os
from typing import IO

import numpy as np

from ..analysis import CodeReader, FunctionIndex
from ..analysis.contexts import BlockFunctions
from ..analysis.framestream import (Clock, FrameRows, PieceSource, block_frames,
                                    piece_frames, trace_frames)
from ..analysis.timeline import Timeline, micros_text
from ..model import Gap
from ..trace import Trace
from .base import pick_threads
from .collapsed import BlockSource
from .history import gap_text

_CORRUPT = "corrupt chunk"


def render(trace: Trace, out: IO[str], *, tid: int | None = None,
           source: BlockSource | PieceSource | None = None) -> None:
    """Write the call timeline of each thread (or of ``tid``) to ``out``; with several
    processes, each process (symbolized with its own modules) under its own pid.
    ``source``: the threads' block ids or decoded branches chunk by chunk (a trace
    file; the trace then holds no branches), else the trace's branches."""
    doc = Document(out)
    doc.add(trace, tid=tid, source=source)
    doc.close()


class Document:
    """One JSON file of the timelines of one or several runs (:meth:`add` each, then
    :meth:`close`); each process under its own pid."""

    def __init__(self, out: IO[str]) -> None:
        self.out, self.first, self.note = out, True, ""
        self.programs: list[str] = []
        self.backend = self.mode = ""
        out.write('{"traceEvents": [\n')

    def add(self, trace: Trace, *, tid: int | None = None,
            source: BlockSource | PieceSource | None = None) -> None:
        views = trace.per_process() if tid is None else [trace]
        for view in views:
            self.note = _process(view, pick_threads(view, tid), self.out, self.first,
                                 source) or self.note
            self.first = False
        self.programs.append(" ".join(trace.argv))
        self.backend, self.mode = self.backend or trace.backend, self.mode or trace.mode

    def close(self) -> None:
        program = self.programs[0] if len(self.programs) == 1 else self.programs
        other = {"program": program, "backend": self.backend, "mode": self.mode,
                 "clock": self.note or "no threads"}
        self.out.write('\n],\n"displayTimeUnit": "ns",\n"otherData": ' + json.dumps(other)
                       + "}\n")


def _process(trace: Trace, tids: list[int], out: IO[str], first: bool,
             source: BlockSource | PieceSource | None) -> str:
    """The events of one process; the note of its timeline."""
    functions = FunctionIndex(trace.symbolizer)
    reader = CodeReader(trace.symbolizer)
    table = BlockFunctions(source.blocks, functions, reader) \
        if isinstance(source, BlockSource) else None
    program = os.path.basename(trace.argv[0]) if trace.argv else f"pid {trace.pid}"
    pid = trace.pid
    out.write(("" if first else ",\n") + json.dumps({"name": "process_name", "ph": "M",
                                                     "pid": pid, "args": {"name": program}}))
    note = ""
    names: dict[int, str] = {}
    for t in tids:
        out.write(",\n" + json.dumps({"name": "thread_name", "ph": "M", "pid": pid, "tid": t,
                                      "args": {"name": f"{program} {t}"}}))
        clock: Clock | Timeline
        if isinstance(source, PieceSource):
            clock = Clock(trace.start_time, trace.end_time)
            writer = _Complete(out, pid, t, functions, names, clock)
            gaps = piece_frames(functions, reader, source.thread(t), clock, writer.rows)
        elif isinstance(source, BlockSource) and table is not None:
            clock = Clock(trace.start_time, trace.end_time)
            writer = _Complete(out, pid, t, functions, names, clock)
            pieces, gap_at = source.thread(t)
            holes: list[tuple[int, int]] = []
            block_frames(table, pieces, gap_at, clock, writer.rows, source.compiled, holes)
            gaps = _gaps(source, t, gap_at) + [Gap(t, i, c, _CORRUPT) for i, c in holes]
            gaps.sort(key=lambda g: g.index)
        else:
            clock, ct_gaps, rows = trace_frames(trace, t, functions, reader)
            writer = _Complete(out, pid, t, functions, names, clock)
            writer.rows(rows)
            gaps = list(ct_gaps)
        writer.finish()
        note = clock.note
        if gaps:
            at = micros_text(clock.ticks(np.array([g.index for g in gaps])))
            for g, ts in zip(gaps, at):
                out.write(",\n" + json.dumps({"name": gap_text(g), "cat": "gap", "ph": "i",
                                              "s": "t", "pid": pid, "tid": t})[:-1]
                          + f', "ts": {ts}}}')
    return note


def _gaps(source: BlockSource, tid: int, at: list[int]) -> list[Gap]:
    """The gaps of a thread read as block ids: the source's, else unnamed ones."""
    if source.gaps is not None:
        return source.gaps(tid)
    return [Gap(tid, i, 0, "lost") for i in at]


class _Complete:
    """Complete events of one thread, written as frames close. A frame whose start
    time is its caller's waits for it (``held``, per depth: the closed callees of the
    frame open at the depth above), so that the caller comes first in the file."""

    def __init__(self, out: IO[str], pid: int, tid: int, functions: FunctionIndex,
                 names: dict[int, str], clock: Clock | Timeline) -> None:
        self.out, self.functions, self.names, self.clock = out, functions, names, clock
        self.head = f', "pid": {pid}, "tid": {tid}, "args": {{"depth": '
        self.held: dict[int, list[str]] = {}

    def rows(self, rows: FrameRows) -> None:
        closing = rows.close >= 0
        if not closing.any():
            return
        keys, which = np.unique(rows.function[closing], return_inverse=True)
        names = []
        for k in keys.tolist():
            name = self.names.get(k)
            if name is None:
                name = self.names[k] = json.dumps(self.functions.name(k))
            names.append(name)
        ts = self.clock.ticks(rows.at[closing] // 2)
        end = self.clock.ticks(rows.close[closing] // 2)
        wait = ts == self.clock.ticks(rows.parent[closing] // 2)
        depths = rows.depth[closing].tolist()
        head = self.head
        texts = [f',\n{{"name": {names[w]}, "cat": "function", "ph": "X", "ts": {start}, '
                 f'"dur": {dur}{head}{depth}}}}}'
                 for w, start, dur, depth in zip(which.tolist(), micros_text(ts),
                                                 micros_text(end - ts), depths)]
        if not self.held and not wait.any():
            self.out.write("".join(texts))
            return
        held = self.held
        buf: list[str] = []
        for text, depth, later in zip(texts, depths, wait.tolist()):
            callees = held.pop(depth + 1, None) if held else None
            if later:
                mine = held.setdefault(depth, [])
                mine.append(text)
                if callees:
                    mine.extend(callees)
            else:
                buf.append(text)
                if callees:
                    buf.extend(callees)
        self.out.write("".join(buf))

    def finish(self) -> None:
        """What is still held: the bottom frames that started with the trace."""
        for depth in sorted(self.held):
            self.out.write("".join(self.held[depth]))
        self.held.clear()
