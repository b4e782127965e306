"""Attach to a running process, record its branches, and detach.

Give the pid as PID or -p PID. Stops at Ctrl-C, after --duration seconds, or when the process ends; the process goes
on running after we detach. Example: branchtrace attach 1234 --duration 2 --report always
"""

from __future__ import annotations

import argparse

from ..backends import Target
from ..errors import UsageError
from ._record import add_record_arguments, positive_float, positive_int, record_and_report

NAME = "attach"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pid", type=positive_int, nargs="?", help="the process to attach to")
    p.add_argument("-p", "--pid", dest="pid_option", type=positive_int, metavar="PID",
                   help="the same, as gdb -p and perf -p spell it")
    p.add_argument("--duration", type=positive_float, metavar="SECONDS",
                   help="detach after this many seconds (default: at Ctrl-C or when it ends)")
    add_record_arguments(p)


def main(args: argparse.Namespace) -> int:
    if args.pid is None and args.pid_option is None:
        raise UsageError("the pid is required: branchtrace attach PID (or -p PID)")
    if args.pid is not None and args.pid_option is not None and args.pid != args.pid_option:
        raise UsageError(f"two pids: {args.pid} and -p {args.pid_option}; give one")
    pid = args.pid if args.pid is not None else args.pid_option
    return record_and_report(args, Target(pid=pid), duration=args.duration)
