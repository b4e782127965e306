"""Show statistics of a trace file: records, kinds, hottest functions and edges.

Records, threads, lost records, duration, branches by kind, and the hottest functions
(by branches taken inside them) and edges (from => to, by count).

With several processes (the program and those it started): a table of them (pid,
parent, threads, branches, exit, argv), then statistics over all of them, perf-like:
each process symbolized with its own modules, functions and edges merged by name.
--pid PID for one process.

The file is read in one pass, chunk by chunk: memory grows with the distinct branches,
not with the trace (~120M branches/s on one core with numba, the `fast` extra).

Example: branchtrace stats fib.btrace --top 5
"""

from __future__ import annotations

import argparse

from ..reporters.base import write_to
from ._file import add_file_arguments, load_file, warn
from ._record import positive_int

NAME = "stats"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_file_arguments(p)
    p.add_argument("--top", type=positive_int, default=10, metavar="N",
                   help="how many hottest functions and edges to show (default 10)")
    p.add_argument("--format", choices=("text", "json"), default="text")


def main(args: argparse.Namespace) -> int:
    # imported here: `branchtrace run` should not pay for the reporters
    from ..reporters import stats
    from ..reporters.base import pick_threads
    from ..tracefile.counts import count_thread

    trace, tf = load_file(args, decode=False)
    edges = {}
    for tid in pick_threads(trace, args.thread):
        counted = count_thread(tf, tid)
        edges[tid] = counted.edges
        if counted.corrupt:
            trace.notes.append(f"thread {tid}: {counted.corrupt} chunk(s) did not "
                               f"decompress; their records are missing")
    write_to(args.output, lambda out: stats.render(trace, out, top=args.top, tid=args.thread,
                                                   fmt=args.format, edges=edges))
    warn(trace)
    return 0
