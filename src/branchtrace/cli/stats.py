"""Show statistics of a trace file: records, kinds, hottest functions and edges.

Records, threads, lost records, duration, branches by kind, and the hottest functions
(by branches taken inside them) and edges (from => to, by count).

Example: branchtrace stats fib.btrace --top 5
"""

from __future__ import annotations

import argparse

from ..reporters import stats
from ..reporters.render import check_output, pick_threads, render
from ..tracefile import open_trace
from ._record import positive_int
from .history import warn

NAME = "stats"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="a trace file (branchtrace run -o FILE ...)")
    p.add_argument("--top", type=positive_int, default=10, metavar="N",
                   help="how many hottest functions and edges to show (default 10)")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--thread", type=positive_int, metavar="TID",
                   help="only this thread (default: every thread)")
    p.add_argument("-o", "--output", default="-", metavar="OUT",
                   help="where to write ('-', the default: stdout)")


def main(args: argparse.Namespace) -> int:
    check_output(args.output)
    trace = open_trace(args.file)
    pick_threads(trace, args.thread)
    render(args.output, lambda out: stats.render(trace, out, top=args.top, tid=args.thread,
                                                 fmt=args.format))
    warn(trace)
    return 0
