"""Show the crash report of a trace file: how the program ended, its last branches.

The report `branchtrace run` prints when the program dies of a signal, from a file.

Example: branchtrace crash crash.btrace --last 8
"""

from __future__ import annotations

import argparse

from ..reporters import crash
from ..reporters.render import check_output, pick_threads, render
from ..tracefile import open_trace
from ._record import positive_int
from .history import warn

NAME = "crash"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="a trace file (branchtrace run -o FILE ...)")
    p.add_argument("--last", type=positive_int, default=16, metavar="N",
                   help="how many of the last branches to show (default 16)")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--thread", type=positive_int, metavar="TID",
                   help="the thread to show (default: the one that took the fatal signal, "
                        "else the main thread)")
    p.add_argument("-o", "--output", default="-", metavar="OUT",
                   help="where to write ('-', the default: stdout)")


def main(args: argparse.Namespace) -> int:
    check_output(args.output)
    trace = open_trace(args.file)
    pick_threads(trace, args.thread)
    render(args.output, lambda out: crash.render(trace, out, last=args.last, fmt=args.format,
                                                 tid=args.thread))
    warn(trace)
    return 0
