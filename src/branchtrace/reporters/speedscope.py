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
from ..analysis.framestream import (Clock, FrameRows, PieceSource, block_frames,
                                    piece_frames, trace_frames)
from ..analysis.timeline import TICKS_PER_US, Timeline, micros_text, ticks
from ..trace import Trace
from .base import pick_threads
from .collapsed import BlockSource

SCHEMA = "https://www.speedscope.app/file-format-schema.json"


def render(trace: Trace, out: IO[str], *, tid: int | None = None,
           source: BlockSource | PieceSource | None = None) -> None:
    """Write the evented profile of each thread (or of ``tid``) to ``out``. ``source``:
    the threads' block ids chunk by chunk (a trace file; the trace then holds no
    branches), else the trace's branches."""
    doc = Document(out)
    doc.add(trace, tid=tid, source=source)
    doc.close()


class Document:
    """One speedscope file of the profiles of one or several runs (:meth:`add` each,
    then :meth:`close`): a profile per thread, frames shared within a process.
    ``several``: profiles named with their process (as with several processes)."""

    def __init__(self, out: IO[str], several: bool = False) -> None:
        self.out, self.first, self.several = out, True, several
        self.frames: list[str] = []                   # JSON of each shared frame
        self.program = ""
        out.write('{"$schema": ' + json.dumps(SCHEMA) + ',\n"profiles": [\n')

    def add(self, trace: Trace, *, tid: int | None = None,
            source: BlockSource | PieceSource | None = None) -> None:
        views = trace.per_process() if tid is None else [trace]
        several = len(views) > 1 or self.several
        program = os.path.basename(trace.argv[0]) if trace.argv else f"pid {trace.pid}"
        self.program = self.program or program
        for view in views:
            functions = FunctionIndex(view.symbolizer)
            reader = CodeReader(view.symbolizer)
            table = BlockFunctions(source.blocks, functions, reader) \
                if isinstance(source, BlockSource) else None
            name = program if not several else \
                f"{os.path.basename(view.argv[0]) if view.argv else '?'} pid {view.pid}"
            frame_of: dict[int, int] = {}              # function key -> frame
            for t in pick_threads(view, tid):
                self._thread(view, t, name, functions, reader, table, source, frame_of)
            functions.locate()
            for key in frame_of:                       # in frame index order
                info = functions.info(key)
                frame: dict[str, Any] = {"name": info.name}
                if info.file:
                    frame["file"] = info.file
                    if info.line:
                        frame["line"] = info.line
                self.frames.append(json.dumps(frame))

    def _thread(self, view: Trace, t: int, name: str, functions: FunctionIndex,
                reader: CodeReader, table: BlockFunctions | None,
                source: BlockSource | PieceSource | None, frame_of: dict[int, int]) -> None:
        head = {"type": "evented", "name": f"{name} thread {t}", "unit": "microseconds",
                "startValue": 0}
        self.out.write(("" if self.first else ",\n") + json.dumps(head)[:-1] + ', "events": [')
        self.first = False
        clock: Clock | Timeline
        base = len(self.frames)                 # this process's frames come after these
        if isinstance(source, PieceSource):
            clock = Clock(view.start_time, view.end_time)
            events = _Events(self.out, base, frame_of, clock)
            piece_frames(functions, reader, source.thread(t), clock, events.rows)
        elif isinstance(source, BlockSource) and table is not None:
            clock = Clock(view.start_time, view.end_time)
            events = _Events(self.out, base, frame_of, clock)
            pieces, gaps = source.thread(t)
            block_frames(table, pieces, gaps, clock, events.rows, source.compiled)
        else:
            clock, _, rows = trace_frames(view, t, functions, reader)
            events = _Events(self.out, base, frame_of, clock)
            events.rows(rows)
        end = int(ticks(np.array([clock.end_ns]))[0]) / TICKS_PER_US
        self.out.write(f'\n], "endValue": {json.dumps(end)}}}')

    def close(self) -> None:
        self.out.write('],\n"shared": {"frames": [\n' + ",\n".join(self.frames) + "]},\n")
        self.out.write(f'"name": {json.dumps(self.program)}, "activeProfileIndex": 0, '
                       f'"exporter": "branchtrace {__version__}"}}\n')


class _Events:
    """The open and close events of one thread, written as they come; frame numbers
    are ``base`` + the function's number in its process (``frame_of``)."""

    def __init__(self, out: IO[str], base: int, frame_of: dict[int, int],
                 clock: Clock | Timeline) -> None:
        self.out, self.base, self.frame_of, self.clock = out, base, frame_of, clock
        self.sep = "\n"

    def rows(self, rows: FrameRows) -> None:
        if not len(rows):
            return
        is_open = rows.close < 0
        at = micros_text(self.clock.ticks(np.where(is_open, rows.at, rows.close) // 2))
        frame_of = self.frame_of
        keys, first, which = np.unique(rows.function, return_index=True, return_inverse=True)
        for i in np.argsort(first, kind="stable").tolist():    # new frames as they come
            frame_of.setdefault(int(keys[i]), len(frame_of))
        ids = np.array([frame_of[k] + self.base for k in keys.tolist()], np.int64)[which]
        kinds = np.where(is_open, '{"type": "O", "frame": ', '{"type": "C", "frame": ').tolist()
        self.out.write(self.sep + ",\n".join(f'{k}{f}, "at": {a}}}'
                                             for k, f, a in zip(kinds, ids.tolist(), at)))
        self.sep = ",\n"
