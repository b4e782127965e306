"""What the commands that read a trace file share: FILE, --thread, -o, loading, warnings."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ..errors import UsageError
from ..reporters.base import check_output, pick_threads

if TYPE_CHECKING:
    from ..trace import Trace
from ._record import positive_int, same_file


def add_file_arguments(p: argparse.ArgumentParser,
                       thread_help: str = "only this thread (default: every thread)") -> None:
    """FILE, --thread TID and -o/--output OUT ('-', the default, is stdout)."""
    p.add_argument("file", metavar="FILE", help="a trace file (branchtrace run -o FILE ...)")
    p.add_argument("--thread", type=positive_int, metavar="TID", help=thread_help)
    p.add_argument("-o", "--output", default="-", metavar="OUT",
                   help="where to write ('-', the default: stdout)")


def check_not_input(file: str, output: str) -> None:
    """Refuse to write the report over the trace it is read from."""
    if output != "-" and same_file(file, output):
        raise UsageError(f"-o {output} is the trace file being read: choose another name")


def load(args: argparse.Namespace) -> Trace:
    """Check the output path, read the trace, check --thread: each a one-line error."""
    check_output(args.output)
    check_not_input(args.file, args.output)
    from ..tracefile import open_trace

    trace = open_trace(args.file)
    pick_threads(trace, args.thread)
    return trace


def warn(trace: Trace) -> None:
    """Say on stderr what makes a report incomplete: a cut-short file, missing binaries."""
    if trace.truncated:
        print("branchtrace: warning: the trace file was cut short; it is read up to its "
              "last whole record", file=sys.stderr)
    for warning in trace.symbolizer.warnings:
        print(f"branchtrace: warning: {warning}", file=sys.stderr)
