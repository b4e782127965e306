"""Run a program under branchtrace; if it dies of a signal, show the last branches it took.

Exits with the program's status (128 + signal number when a signal killed it).
Example: branchtrace run --last 8 -- ./crash

With --gdb, a crash (a signal that dumps core: SIGSEGV, SIGABRT, SIGBUS, SIGFPE, SIGILL,
...) stops the program before the signal is delivered, our tracing removed, and GDB
attaches to it with the trace of that moment loaded: `bt`, registers and memory, with
bt-calls, bt-insns and bt-crash (`branchtrace gdb-init`). When GDB quits, the signal is
delivered and run exits with the program's status. Example:
  branchtrace run --gdb -- ./crash
  branchtrace run --gdb --gdb-args "-batch -ex bt -ex 'bt-calls 5'" -- ./crash
"""

from __future__ import annotations

import argparse
import os

from ..backends import Target
from ..errors import UsageError
from ._record import add_record_arguments, record_and_report

NAME = "run"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_record_arguments(p)
    g = p.add_argument_group("debugger")
    g.add_argument("--gdb", action="store_true",
                   help="at a crash, leave the program stopped before the signal is "
                        "delivered and start gdb attached to it with the trace loaded "
                        "(-o FILE keeps the trace; else a temporary file)")
    g.add_argument("--gdb-args", metavar="ARGS", default=None,
                   help="more gdb arguments, split as a shell would (default: "
                        "$BRANCHTRACE_GDB_ARGS), e.g. \"-batch -ex bt -ex bt-calls\"")
    p.add_argument("program", nargs=argparse.REMAINDER, metavar="-- PROGRAM [ARGS...]",
                   help="the program to run and its arguments")


def main(args: argparse.Namespace) -> int:
    argv = list(args.program)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise UsageError("no program given: branchtrace run [OPTIONS] -- PROGRAM [ARGS...]")
    if args.gdb:
        from . import _gdb
        from ..backends.linux import sys as pt

        args.gdb = _gdb.find_gdb()
        args.gdb_args = _gdb.gdb_extra_args(args.gdb_args)
        _gdb.check_attach()
        pt.become_subreaper()   # the program outlives its tracer: we wait for it after gdb
    elif args.gdb_args is not None:
        raise UsageError("--gdb-args needs --gdb")
    return record_and_report(args, Target(argv=tuple(argv), disable_aslr=args.disable_randomization,
                                          ptracer=os.getpid() if args.gdb else None))
