"""Show statistics of a trace file: records, kinds, hottest functions and edges.

Records, threads, lost records, duration, branches by kind, and the hottest functions
(by branches taken inside them) and edges (from => to, by count).

With several processes (the program and those it started): a table of them (pid,
parent, threads, branches, exit, argv), then statistics over all of them, perf-like:
each process symbolized with its own modules, functions and edges merged by name.
--pid PID for one process.

Example: branchtrace stats fib.btrace --top 5
"""

from __future__ import annotations

import argparse

from ..reporters.base import write_to
from ._file import add_file_arguments, load, warn
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
    trace = load(args)
    write_to(args.output, lambda out: stats.render(trace, out, top=args.top, tid=args.thread,
                                                   fmt=args.format))
    warn(trace)
    return 0
