"""Write a profile of a trace file: call stacks rebuilt from its calls and returns.

Formats:
  perfetto    Chrome trace-event JSON with one complete event per call, a timeline per
              thread: open it in https://ui.perfetto.dev (or chrome://tracing)
  speedscope  speedscope's evented JSON: open it in https://www.speedscope.app
  collapsed   "a;b;c WEIGHT" lines for flamegraph.pl, weighted by the branches taken
              with that stack

Branches carry no timestamps: times are spread evenly over the branches recorded
between the trace's timestamps (per chunk in a trace file), so they are estimates.
Example: branchtrace profile fib.btrace --format perfetto -o fib.json
"""

from __future__ import annotations

import argparse

from ..reporters.base import render
from ._file import add_file_arguments, load, warn

NAME = "profile"
FORMATS = ("perfetto", "speedscope", "collapsed")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_file_arguments(p)
    p.add_argument("--format", required=True, choices=FORMATS, help="output format")


def main(args: argparse.Namespace) -> int:
    # imported here: `branchtrace run` should not pay for the reporters
    from ..reporters import collapsed, perfetto, speedscope
    trace = load(args)
    if args.format == "perfetto":
        render(args.output, lambda out: perfetto.render(trace, out, tid=args.thread))
    elif args.format == "speedscope":
        render(args.output, lambda out: speedscope.render(trace, out, tid=args.thread))
    else:
        render(args.output, lambda out: collapsed.render(trace, out, tid=args.thread))
    warn(trace)
    return 0
