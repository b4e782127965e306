"""Run a program under branchtrace; if it dies of a signal, show the last branches it took.

Exits with the program's status (128 + signal number when a signal killed it).
Example: branchtrace run --last 8 -- ./crash
"""

from __future__ import annotations

import argparse

from ..backends import Target
from ..errors import UsageError
from ._record import add_record_arguments, record_and_report

NAME = "run"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_record_arguments(p)
    p.add_argument("program", nargs=argparse.REMAINDER, metavar="-- PROGRAM [ARGS...]",
                   help="the program to run and its arguments")


def main(args: argparse.Namespace) -> int:
    argv = list(args.program)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise UsageError("no program given: branchtrace run [OPTIONS] -- PROGRAM [ARGS...]")
    return record_and_report(args, Target(argv=tuple(argv), disable_aslr=args.disable_randomization))
