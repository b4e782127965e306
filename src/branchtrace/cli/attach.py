"""Attach to a running process, record its branches, and detach.

Stops at Ctrl-C, after --duration seconds, or when the process ends; the process goes
on running after we detach. Example: branchtrace attach 1234 --duration 2 --report always
"""

from __future__ import annotations

import argparse

from ..backends import Target
from ._record import add_record_arguments, positive_float, positive_int, record_and_report

NAME = "attach"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pid", type=positive_int, help="the process to attach to")
    p.add_argument("--duration", type=positive_float, metavar="SECONDS",
                   help="detach after this many seconds (default: at Ctrl-C or when it ends)")
    add_record_arguments(p)


def main(args: argparse.Namespace) -> int:
    return record_and_report(args, Target(pid=args.pid), duration=args.duration)
