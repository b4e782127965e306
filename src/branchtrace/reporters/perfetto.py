"""A timeline for ui.perfetto.dev (and chrome://tracing): Chrome trace-event JSON.

One complete event (``"ph": "X"``) per call, that is per frame of the rebuilt call
stacks, on one track per thread, in microseconds from the start of the trace. The
branches carry no time: each branch's time comes from :meth:`Trace.times` (spread over
the chunk it was recorded in), so durations are estimates, proportional to branches
taken within a chunk. Gaps are instant events. Times are multiples of 1/1024 us written
exactly (analysis/timeline.py), so ``ts + dur`` in a reader's floating point is the
end meant, and a call that ends where the next starts never seems to overlap it. The
layout::

    {"traceEvents": [
      {"name": "process_name", "ph": "M", "pid": P, "args": {"name": "fib"}},
      {"name": "thread_name", "ph": "M", "pid": P, "tid": T, "args": {"name": "fib 123"}},
      {"name": "main", "cat": "function", "ph": "X", "ts": 0, "dur": 812.3447265625,
       "pid": P, "tid": T, "args": {"depth": 0}},
      ...],
     "displayTimeUnit": "ns",
     "otherData": {"program": "...", "backend": "...", "clock": "..."}}

Events of a thread are written parents first (by start, then depth), so importers that
keep the order of equal timestamps nest them right.
"""

from __future__ import annotations

import json
import os
from typing import IO

import numpy as np

from ..analysis import CodeReader, FunctionIndex, Timeline, call_trace
from ..analysis.timeline import micros_text
from ..trace import Trace
from .history import gap_text
from .base import pick_threads


def render(trace: Trace, out: IO[str], *, tid: int | None = None) -> None:
    """Write the call timeline of each thread (or of ``tid``) to ``out``; with several
    processes, each process (symbolized with its own modules) under its own pid."""
    views = trace.per_process() if tid is None else [trace]
    out.write('{"traceEvents": [\n')
    note = ""
    for k, view in enumerate(views):
        note = _process(view, pick_threads(view, tid), out, k == 0) or note
    other = {"program": " ".join(trace.argv), "backend": trace.backend, "mode": trace.mode,
             "clock": note or "no threads"}
    out.write('\n],\n"displayTimeUnit": "ns",\n"otherData": ' + json.dumps(other) + "}\n")


def _process(trace: Trace, tids: list[int], out: IO[str], first: bool) -> str:
    """The events of one process; the note of its timeline."""
    functions = FunctionIndex(trace.symbolizer)
    reader = CodeReader(trace.symbolizer)
    program = os.path.basename(trace.argv[0]) if trace.argv else f"pid {trace.pid}"
    pid = trace.pid
    out.write(("" if first else ",\n") + json.dumps({"name": "process_name", "ph": "M",
                                                     "pid": pid, "args": {"name": program}}))
    note = ""
    for t in tids:
        out.write(",\n" + json.dumps({"name": "thread_name", "ph": "M", "pid": pid, "tid": t,
                                      "args": {"name": f"{program} {t}"}}))
        ct = call_trace(trace, t, functions=functions, reader=reader)
        timeline = Timeline(trace, t)
        note = timeline.note
        order = np.lexsort((ct.frame_depth, ct.frame_open))
        begin = timeline.ticks(ct.frame_open[order] // 2)
        end = timeline.ticks(ct.frame_close[order] // 2)
        names: dict[int, str] = {}
        head = f', "pid": {pid}, "tid": {t}, "args": {{"depth": '
        buf: list[str] = []
        for key, depth, ts, dur in zip(ct.frame_function[order].tolist(),
                                       ct.frame_depth[order].tolist(), micros_text(begin),
                                       micros_text(end - begin)):
            name = names.get(key)
            if name is None:
                name = names[key] = json.dumps(functions.name(key))
            buf.append(f',\n{{"name": {name}, "cat": "function", "ph": "X", "ts": {ts}, '
                       f'"dur": {dur}{head}{depth}}}}}')
            if len(buf) >= 8192:
                out.write("".join(buf))
                buf.clear()
        out.write("".join(buf))
        if ct.gaps:
            at = micros_text(timeline.ticks(np.array([g.index for g in ct.gaps])))
            for g, ts in zip(ct.gaps, at):
                out.write(",\n" + json.dumps({"name": gap_text(g), "cat": "gap", "ph": "i",
                                              "s": "t", "pid": pid, "tid": t})[:-1]
                          + f', "ts": {ts}}}')
    return note
