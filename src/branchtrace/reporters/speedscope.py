"""A profile for speedscope (https://www.speedscope.app): its evented JSON format.

One ``evented`` profile per thread (schema:
https://www.speedscope.app/file-format-schema.json): an open (``O``) event when a
frame of the rebuilt call stack starts and a close (``C``) event when it ends, at times
in microseconds from the start of the trace (estimated as for :mod:`.perfetto`, and
like it exact multiples of 1/1024 us).
Frames are shared between the profiles: one per function, with its source file and
line when the binary has DWARF. Events are in the order things happen: by position in
the trace, closes before opens, deeper closes first, so every close matches the frame
on top of speedscope's stack. With several processes, one profile per thread of each,
named with its process; each process's functions are its own frames.

The events are written as the walk over the trace finds them (from a block-id file,
``source``, chunk by chunk: memory grows with the call depth and the distinct
functions, not with the trace); the shared frames table comes last (a JSON object's
keys have no order). When a thread returns out of the frame it started in, the caller
it returns to opens there (the trace never showed it before).
"""

from __future__ import annotations

import json
import os
from typing import IO, Any

import numpy as np

from .._version import __version__
from ..analysis import CodeReader, FunctionIndex
from ..analysis.contexts import BlockFunctions
from ..analysis.framestream import Clock, FrameRows, block_frames, trace_frames
from ..analysis.timeline import TICKS_PER_US, Timeline, micros_text, ticks
from ..trace import Trace
from .base import pick_threads
from .collapsed import BlockSource

SCHEMA = "https://www.speedscope.app/file-format-schema.json"


def render(trace: Trace, out: IO[str], *, tid: int | None = None,
           source: BlockSource | None = None) -> None:
    """Write the evented profile of each thread (or of ``tid``) to ``out``. ``source``:
    the threads' block ids chunk by chunk (a trace file; the trace then holds no
    branches), else the trace's branches."""
    views = trace.per_process() if tid is None else [trace]
    several = len(views) > 1
    program = os.path.basename(trace.argv[0]) if trace.argv else f"pid {trace.pid}"
    frame_of: dict[tuple[int, int], int] = {}       # (process, function key) -> frame
    indexes = [FunctionIndex(view.symbolizer) for view in views]
    out.write('{"$schema": ' + json.dumps(SCHEMA) + ',\n"profiles": [\n')
    first = True
    for v, (view, functions) in enumerate(zip(views, indexes)):
        reader = CodeReader(view.symbolizer)
        table = BlockFunctions(source.blocks, functions, reader) if source is not None \
            else None
        name = program if not several else \
            f"{os.path.basename(view.argv[0]) if view.argv else '?'} pid {view.pid}"
        for t in pick_threads(view, tid):
            head = {"type": "evented", "name": f"{name} thread {t}", "unit": "microseconds",
                    "startValue": 0}
            out.write(("" if first else ",\n") + json.dumps(head)[:-1] + ', "events": [')
            first = False
            clock: Clock | Timeline
            if source is not None and table is not None:
                clock = Clock(view.start_time, view.end_time)
                events = _Events(out, v, frame_of, clock)
                pieces, gaps = source.thread(t)
                block_frames(table, pieces, gaps, clock, events.rows, source.compiled)
            else:
                clock, _, rows = trace_frames(view, t, functions, reader)
                events = _Events(out, v, frame_of, clock)
                events.rows(rows)
            end = int(ticks(np.array([clock.end_ns]))[0]) / TICKS_PER_US
            out.write(f'\n], "endValue": {json.dumps(end)}}}')
    for functions in indexes:
        functions.locate()
    shared: list[dict[str, Any]] = []
    for v, key in frame_of:                             # in frame index order
        info = indexes[v].info(key)
        frame: dict[str, Any] = {"name": info.name}
        if info.file:
            frame["file"] = info.file
            if info.line:
                frame["line"] = info.line
        shared.append(frame)
    out.write('],\n"shared": {"frames": [\n' + ",\n".join(json.dumps(f) for f in shared)
              + "]},\n")
    out.write(f'"name": {json.dumps(program)}, "activeProfileIndex": 0, '
              f'"exporter": "branchtrace {__version__}"}}\n')


class _Events:
    """The open and close events of one thread, written as they come."""

    def __init__(self, out: IO[str], v: int, frame_of: dict[tuple[int, int], int],
                 clock: Clock | Timeline) -> None:
        self.out, self.v, self.frame_of, self.clock = out, v, frame_of, clock
        self.sep = "\n"

    def rows(self, rows: FrameRows) -> None:
        if not len(rows):
            return
        is_open = rows.close < 0
        at = micros_text(self.clock.ticks(np.where(is_open, rows.at, rows.close) // 2))
        frame_of, v = self.frame_of, self.v
        keys, first, which = np.unique(rows.function, return_index=True, return_inverse=True)
        for i in np.argsort(first, kind="stable").tolist():    # new frames as they come
            frame_of.setdefault((v, int(keys[i])), len(frame_of))
        ids = np.array([frame_of[(v, k)] for k in keys.tolist()], np.int64)[which]
        kinds = np.where(is_open, '{"type": "O", "frame": ', '{"type": "C", "frame": ').tolist()
        self.out.write(self.sep + ",\n".join(f'{k}{f}, "at": {a}}}'
                                             for k, f, a in zip(kinds, ids.tolist(), at)))
        self.sep = ",\n"
