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

Every format reads a block-id (stalker) file chunk by chunk, in memory that grows with
the distinct blocks, functions and call stacks (and the call depth), not with the
trace: perfetto writes each call as it returns (callees before their callers),
speedscope its open and close events as they happen. perfetto and speedscope read a
from/to (ptrace) file decoded chunk by chunk too; collapsed decodes it whole first.

Several FILEs (or directories: every *.btrace inside) make one profile of all the runs:
collapsed adds the same stack's weights; perfetto puts each run's processes in one
timeline (under their pids), speedscope makes a profile per thread of each run (named
with its program and pid). The files are read one after the other.

Branches carry no timestamps: times are spread evenly over the branches recorded
between the trace's timestamps (per chunk in a trace file), so they are estimates.
Example: branchtrace profile fib.btrace --format perfetto -o fib.json
"""

from __future__ import annotations

import argparse

from typing import IO, TYPE_CHECKING

from ..errors import UsageError
from ..reporters.base import Options, check_output, write_report, write_to
from ..reporters.table import TRACE_REPORTERS
from ._file import add_file_arguments, load_file, select_process, warn
from ._inputs import expand_inputs

if TYPE_CHECKING:
    from ..analysis.framestream import PieceSource
    from ..reporters.collapsed import BlockSource
    from ..trace import Trace

NAME = "profile"
FORMATS = tuple(TRACE_REPORTERS)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_file_arguments(p, several=True)
    p.add_argument("--format", required=True, choices=FORMATS, help="output format")


def main(args: argparse.Namespace) -> int:
    files = expand_inputs(args.files, args.output)
    if len(files) > 1:
        return _several(args, files)
    args.file = files[0]
    _one(args, args.output)
    return 0


def _several(args: argparse.Namespace, files: list[str]) -> int:
    """Several runs: their collapsed stacks, the same stack's weights added (as
    flamegraph.pl does with lines it is given twice); or one timeline document."""
    if args.pid is not None or args.thread is not None:
        raise UsageError("--pid and --thread choose in one trace file: give one FILE")
    check_output(args.output)
    if args.format != "collapsed":
        write_to(args.output, lambda out: _documents(args, files, out))
        return 0
    from ..reporters import collapsed

    trie = collapsed.StackTrie(summed=True)      # the stacks, not their text: bounded
    for path in files:
        args.file = path
        trace, source = _read(args)
        assert source is None or isinstance(source, collapsed.BlockSource)
        collapsed.add(trie, trace, source=source)
        warn(trace)
    write_to(args.output, trie.write)
    return 0


def _documents(args: argparse.Namespace, files: list[str], out: IO[str]) -> None:
    """The perfetto or speedscope document of several runs, one file at a time."""
    from ..reporters import perfetto, speedscope

    doc = perfetto.Document(out) if args.format == "perfetto" \
        else speedscope.Document(out, several=True)
    for path in files:
        args.file = path
        trace, source = _read(args)
        doc.add(trace, source=source)
        warn(trace)
    doc.close()


def _read(args: argparse.Namespace) -> tuple[Trace, BlockSource | PieceSource | None]:
    """``args.file`` with --pid and --thread: the trace without its branches and its
    block ids (or for perfetto and speedscope its decoded from/to records) chunk by
    chunk, or (collapsed of from/to records) the whole trace."""
    from ..analysis.framestream import PieceSource
    from ..reporters.collapsed import BlockSource
    from ..tracefile import to_trace
    from ..tracefile.stream import IdStream, ThreadStream, id_source

    trace, tf = load_file(args, decode=False)
    threads = id_source(tf)
    if (threads is None or tf.blocks is None) and args.format != "collapsed":
        return trace, PieceSource(lambda t: ThreadStream(tf, t))
    if threads is None or tf.blocks is None:        # the branches in memory
        return select_process(to_trace(tf), args.pid, args.thread), None
    return trace, BlockSource(tf.blocks, threads, gaps=lambda t: IdStream(tf, t).gap_values)


def _one(args: argparse.Namespace, output: str | IO[str]) -> None:
    """The profile of ``args.file`` to ``output`` (a path, '-', or a stream)."""
    if not isinstance(output, str):
        args = argparse.Namespace(**{**vars(args), "output": "-"})
    trace, source = _read(args)
    if source is None:
        if isinstance(output, str):
            write_report(TRACE_REPORTERS[args.format], trace, output, Options(tid=args.thread))
        else:
            TRACE_REPORTERS[args.format].render(trace, output, Options(tid=args.thread))
    else:                              # block ids, chunk by chunk
        from ..reporters import collapsed, perfetto, speedscope

        def render(out: IO[str]) -> None:
            if args.format == "collapsed":
                assert isinstance(source, collapsed.BlockSource)
                collapsed.render(trace, out, tid=args.thread, source=source)
            else:
                module = perfetto if args.format == "perfetto" else speedscope
                module.render(trace, out, tid=args.thread, source=source)

        if isinstance(output, str):
            write_to(output, render)
        else:
            render(output)
    warn(trace)
