"""A profile for speedscope (https://www.speedscope.app): its evented JSON format.

One ``evented`` profile per thread (schema:
https://www.speedscope.app/file-format-schema.json): an open (``O``) event when a
frame of the rebuilt call stack starts and a close (``C``) event when it ends, at times
in microseconds from the start of the trace (estimated as for :mod:`.perfetto`, and
like it exact multiples of 1/1024 us).
Frames are shared between the profiles: one per function, with its source file and
line when the binary has DWARF. Events are ordered so that every close matches the
frame on top of speedscope's stack: by position in the trace, closes before opens,
deeper closes first, shallower opens first. With several processes, one profile per
thread of each, named with its process; each process's functions are its own frames.
"""

from __future__ import annotations

import json
import os
from typing import IO, Any

import numpy as np

from .._version import __version__
from ..analysis import CodeReader, FunctionIndex, Timeline, call_trace
from ..analysis.timeline import TICKS_PER_US, micros_text, ticks
from ..trace import Trace
from .base import pick_threads

SCHEMA = "https://www.speedscope.app/file-format-schema.json"


def render(trace: Trace, out: IO[str], *, tid: int | None = None) -> None:
    """Write the evented profile of each thread (or of ``tid``) to ``out``."""
    views = trace.per_process() if tid is None else [trace]
    several = len(views) > 1
    program = os.path.basename(trace.argv[0]) if trace.argv else f"pid {trace.pid}"
    frame_of: dict[tuple[int, int], int] = {}       # (process, function key) -> frame
    indexes = [FunctionIndex(view.symbolizer) for view in views]
    profiles: list[str] = []
    for v, (view, functions) in enumerate(zip(views, indexes)):
        reader = CodeReader(view.symbolizer)
        name = program if not several else \
            f"{os.path.basename(view.argv[0]) if view.argv else '?'} pid {view.pid}"
        profiles += _profiles(view, pick_threads(view, tid), v, name, functions, reader,
                              frame_of)
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
    out.write('{"$schema": ' + json.dumps(SCHEMA) + ",\n")
    out.write('"shared": {"frames": [\n' + ",\n".join(json.dumps(f) for f in shared) + "]},\n")
    out.write('"profiles": [\n' + ",\n".join(profiles) + "],\n")
    out.write(f'"name": {json.dumps(program)}, "activeProfileIndex": 0, '
              f'"exporter": "branchtrace {__version__}"}}\n')


def _profiles(trace: Trace, tids: list[int], v: int, program: str, functions: FunctionIndex,
              reader: CodeReader, frame_of: dict[tuple[int, int], int]) -> list[str]:
    """The profiles of the threads of one process (number ``v``)."""
    profiles: list[str] = []
    for t in tids:
        ct = call_trace(trace, t, functions=functions, reader=reader)
        timeline = Timeline(trace, t)
        m = len(ct.frame_function)
        pos = np.concatenate((ct.frame_open, ct.frame_close))
        is_open = np.concatenate((np.ones(m, np.int64), np.zeros(m, np.int64)))
        depth = np.concatenate((ct.frame_depth, -ct.frame_depth))
        order = np.lexsort((depth, is_open, pos))
        keys = np.concatenate((ct.frame_function, ct.frame_function))[order].tolist()
        frames = []
        for key in keys:
            f = frame_of.get((v, key))
            if f is None:
                f = frame_of[(v, key)] = len(frame_of)
            frames.append(f)
        at = micros_text(timeline.ticks(pos[order] // 2))
        kinds = ["O" if o else "C" for o in is_open[order].tolist()]
        events = ",\n".join(f'{{"type": "{k}", "frame": {f}, "at": {a}}}'
                            for k, f, a in zip(kinds, frames, at))
        head = {"type": "evented", "name": f"{program} thread {t}", "unit": "microseconds",
                "startValue": 0,
                "endValue": int(ticks(np.array([timeline.end_ns]))[0]) / TICKS_PER_US}
        profiles.append(json.dumps(head)[:-1] + ', "events": [\n' + events + "]}")
    return profiles
