"""Show what a recorded program did, as GDB's record history shows it.

--calls (default): the function call history, GDB's `record function-call-history`:
one numbered line per function segment (a stretch of execution in one function
instance; a function that makes two calls shows as three segments), indented by call
depth. GDB's modifiers are options:
  --lines        /l  the source lines each segment ran:   at fib.c:5,6
  --insn-ranges  /i  the instruction numbers it ran:       inst 12,25
  --no-indent        no indentation by call depth (GDB indents only with /c;
                     here indenting is the default)
--insns: the instruction history, GDB's `record instruction-history`: every
instruction run, numbered from 1, decoded (capstone) from the binaries on disk
between one branch's target and the next branch's source.
  --source       /s  interleave the source lines (from DWARF)

With several processes: each process's history after the other's, headed
"process PID (parent PPID): ARGV", each symbolized with its own modules; --pid PID
for one process.

--range FROM,TO (GDB's ranges) shows the lines numbered FROM to TO and stops reading
after TO; --function NAME the call history's segments of one function.

Example: branchtrace history fib.btrace --calls --lines --insn-ranges --last 20
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING

from ..errors import UsageError
from ..reporters.base import write_to
from ._file import add_file_arguments, load_file, warn

if TYPE_CHECKING:
    import numpy as np

    from ..model import Gap
    from ..trace import Trace
from ._record import positive_int

NAME = "history"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_file_arguments(p, "only this thread (default: every thread, one after the other)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--calls", action="store_true",
                      help="the function call history (the default)")
    what.add_argument("--insns", action="store_true", help="the instruction history")
    c = p.add_argument_group("call history (GDB's /l /i /c)")
    c.add_argument("--lines", action="store_true",
                   help="/l: the source lines of each segment (at FILE:FIRST,LAST)")
    c.add_argument("--insn-ranges", action="store_true",
                   help="/i: the instruction numbers of each segment (inst FIRST,LAST)")
    c.add_argument("--no-indent", action="store_true",
                   help="do not indent by call depth (GDB's output without /c)")
    i = p.add_argument_group("instruction history (GDB's /s)")
    i.add_argument("--source", action="store_true",
                   help="/s: interleave source lines with the instructions")
    p.add_argument("--range", metavar="FROM,TO",
                   help="only the lines numbered FROM to TO (GDB's FROM,TO; 'FROM,' to the "
                        "end); reading stops after TO")
    p.add_argument("--function", metavar="NAME",
                   help="--calls: only the segments of function NAME (C++: with or without "
                        "its parameters)")
    p.add_argument("--last", type=positive_int, metavar="N",
                   help="only the last N segments (--calls) or instructions (--insns)")


def main(args: argparse.Namespace) -> int:
    if args.insns and (args.lines or args.insn_ranges or args.no_indent):
        raise UsageError("--lines, --insn-ranges and --no-indent go with --calls, not --insns")
    if not args.insns and args.source:
        raise UsageError("--source goes with --insns")
    if args.range is not None and args.last is not None:
        raise UsageError("--range and --last each choose the lines: give one")
    if args.function is not None and args.insns:
        raise UsageError("--function goes with --calls")
    from ..reporters.history_filter import LineFilter, RangeDone, parse_range
    try:
        first, last = parse_range(args.range) if args.range is not None else (1, None)
    except ValueError as err:
        raise UsageError(str(err)) from None
    # imported here: `branchtrace run` should not pay for the reporters
    from ..reporters import history_stream as history
    from ..tracefile.stream import Piece, pieces

    # the branches are decoded a chunk at a time and each line written when known
    trace, tf = load_file(args, decode=False)

    def branches_of(tid: int) -> Iterator[np.ndarray | Gap]:
        for part in pieces(tf, tid):
            yield part.branches if isinstance(part, Piece) else part

    def render(sink: IO[str]) -> None:
        out: IO[str] = sink
        if args.range is not None or args.function is not None:
            out = LineFilter(sink, first, last, args.function,  # type: ignore[assignment]
                             insns=args.insns)
        try:
            show(out)
        except RangeDone:
            pass

    # --last: each thread read from its last chunks when it can be (numbers counted)
    from ._history_tail import call_resumer, insn_resumer
    resume = call_resumer(tf, args.last) if args.last is not None and not args.insns else None
    resume_insns = insn_resumer(tf, args.last) if args.last is not None and args.insns \
        else None

    def show(out: IO[str]) -> None:
        for one in trace.per_process():
            if len(trace.processes) > 1:
                out.write(_heading(one))
            if args.insns:
                history.stream_insns(one, branches_of, out, tid=args.thread, last=args.last,
                                     source=args.source, resume=resume_insns)
            else:
                history.stream_calls(one, branches_of, out, tid=args.thread, last=args.last,
                                     indent=not args.no_indent, insn_ranges=args.insn_ranges,
                                     lines=args.lines, resume=resume)

    write_to(args.output, render)
    warn(trace)
    return 0


def _heading(one: Trace) -> str:
    p = one.processes[0]
    return f"process {p.pid} (parent {p.ppid or '-'}): {' '.join(p.argv) or '?'}\n"
