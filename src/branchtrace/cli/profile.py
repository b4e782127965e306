"""Write a profile of a trace file: call stacks rebuilt from its calls and returns.

Formats:
  perfetto    Chrome trace-event JSON with one complete event per call, a timeline per
              thread: open it in https://ui.perfetto.dev (or chrome://tracing)
  speedscope  speedscope's evented JSON: open it in https://www.speedscope.app
  collapsed   "a;b;c WEIGHT" lines for flamegraph.pl, weighted by the branches taken
              with that stack

With several processes, each one's stacks (symbolized with its own modules): perfetto
under its own pid, speedscope as its own profiles, collapsed stacks headed "PROGRAM
PID"; --pid PID for one process.

Branches carry no timestamps: times are spread evenly over the branches recorded
between the trace's timestamps (per chunk in a trace file), so they are estimates.
Example: branchtrace profile fib.btrace --format perfetto -o fib.json
"""

from __future__ import annotations

import argparse

from ..reporters.base import Options, write_report
from ..reporters.table import TRACE_REPORTERS
from ._file import add_file_arguments, load, warn

NAME = "profile"
FORMATS = tuple(TRACE_REPORTERS)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_file_arguments(p)
    p.add_argument("--format", required=True, choices=FORMATS, help="output format")


def main(args: argparse.Namespace) -> int:
    trace = load(args)
    write_report(TRACE_REPORTERS[args.format], trace, args.output, Options(tid=args.thread))
    warn(trace)
    return 0
