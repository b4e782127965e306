"""What the commands that read a trace file share: FILE, --pid, --thread, -o, loading,
warnings.

A trace may hold several processes (the program and the processes it started). Each
process is read with its own module maps (after an exec, a process's addresses mean
other code than its parent's): ``--pid PID`` reads one process, ``--thread TID`` reads
the process of that thread; without them each command covers every process in the way
its docstring says."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ..errors import UsageError
from ..reporters.base import check_output, pick_threads

if TYPE_CHECKING:
    from ..trace import Trace
    from ..tracefile import TraceFile
from ._record import positive_int, same_file


def add_file_arguments(p: argparse.ArgumentParser,
                       thread_help: str = "only this thread (default: every thread)",
                       several: bool = False) -> None:
    """FILE, --thread TID and -o/--output OUT ('-', the default, is stdout).
    ``several``: FILE... instead (``args.files``: trace files and directories of them;
    cli/_inputs.py expands them)."""
    if several:
        p.add_argument("files", nargs="+", metavar="FILE",
                       help="trace files (branchtrace run -o FILE ...), or directories: "
                            "every *.btrace inside")
    else:
        p.add_argument("file", metavar="FILE", help="a trace file (branchtrace run -o FILE ...)")
    add_pid_argument(p)
    p.add_argument("--thread", type=positive_int, metavar="TID", help=thread_help)
    p.add_argument("-o", "--output", default="-", metavar="OUT",
                   help="where to write ('-', the default: stdout)")


def add_pid_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pid", type=positive_int, metavar="PID",
                   help="only this process (default: every process; branchtrace stats "
                        "lists them)")


def select_process(trace: Trace, pid: int | None, tid: int | None = None) -> Trace:
    """The trace of process ``pid`` (a one-line error naming the pids there are), or of
    the process of thread ``tid``, or the whole trace."""
    if pid is not None:
        trace = trace.for_pid(pid)
    elif tid is not None and len(trace.processes) > 1 and tid in trace.threads:
        trace = trace.for_pid(trace.process_of(tid).pid)
    pick_threads(trace, tid)
    return trace


def check_not_input(file: str, output: str) -> None:
    """Refuse to write the report over the trace it is read from."""
    if output != "-" and same_file(file, output):
        raise UsageError(f"-o {output} is the trace file being read: choose another name")


def load(args: argparse.Namespace) -> Trace:
    """Check the output path, read the trace, select --pid or the process of --thread and
    check them: each a one-line error."""
    return load_file(args)[0]


def load_file(args: argparse.Namespace, decode: bool = True) -> tuple[Trace, TraceFile]:
    """:func:`load`, and the scanned file. ``decode=False``: the trace has everything
    but the branches (for a command that counts them from the file itself)."""
    check_output(args.output)
    check_not_input(args.file, args.output)
    from ..tracefile import scan, to_trace

    tf = scan(args.file)
    return select_process(to_trace(tf, decode=decode), args.pid, args.thread), tf


def warn(trace: Trace) -> None:
    """Say on stderr what makes a report incomplete: a cut-short file, missing binaries."""
    for warning in warnings_of(trace):
        print(f"branchtrace: warning: {warning}", file=sys.stderr)


def warnings_of(trace: Trace, name: str = "the trace file") -> list[str]:
    """What :func:`warn` says of ``trace`` (read from ``name``), one line each."""
    out = [f"{name} was cut short; it is read up to its last whole record"] \
        if trace.truncated else []
    for one in trace.per_process():
        out += one.symbolizer.warnings
    return list(dict.fromkeys(out))
