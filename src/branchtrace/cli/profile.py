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

collapsed reads a block-id (stalker) file chunk by chunk, in memory that grows with the
distinct blocks and call stacks, not with the trace; the other formats, and from/to
(ptrace) files, decode the whole trace first.

Branches carry no timestamps: times are spread evenly over the branches recorded
between the trace's timestamps (per chunk in a trace file), so they are estimates.
Example: branchtrace profile fib.btrace --format perfetto -o fib.json
"""

from __future__ import annotations

import argparse

from ..reporters.base import Options, write_report, write_to
from ..reporters.table import TRACE_REPORTERS
from ._file import add_file_arguments, load_file, select_process, warn

NAME = "profile"
FORMATS = tuple(TRACE_REPORTERS)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_file_arguments(p)
    p.add_argument("--format", required=True, choices=FORMATS, help="output format")


def main(args: argparse.Namespace) -> int:
    from ..tracefile import to_trace
    from ..tracefile.stream import id_source

    trace, tf = load_file(args, decode=False)
    threads = id_source(tf) if args.format == "collapsed" else None
    if threads is None or tf.blocks is None:        # the branches in memory
        trace = select_process(to_trace(tf), args.pid, args.thread)
        write_report(TRACE_REPORTERS[args.format], trace, args.output, Options(tid=args.thread))
    else:                              # block ids, chunk by chunk
        from ..reporters import collapsed

        source = collapsed.BlockSource(tf.blocks, threads)
        write_to(args.output, lambda out: collapsed.render(trace, out, tid=args.thread,
                                                           source=source))
    warn(trace)
    return 0
