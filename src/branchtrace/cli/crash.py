"""Show the crash report of a trace file: how the program ended, its last branches.

The report `branchtrace run` prints when the program dies of a signal, from a file.
With several processes: the report of every process that died of a signal, each headed
with its pid and argv (the first process's when none did); --pid PID for one process.
JSON: one report, or {"reports": [...]} when several processes died of a signal.

Example: branchtrace crash crash.btrace --last 8
"""

from __future__ import annotations

import argparse

from ..reporters.base import write_to
from ._file import add_file_arguments, load_file, warn
from ._record import REPLAY_WINDOW, add_own_argument, positive_int

NAME = "crash"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_file_arguments(p, "the thread to show (default: the one that took the fatal signal, else the main thread)")
    p.add_argument("--last", type=positive_int, default=16, metavar="N",
                   help="how many of the last branches to show (default 16)")
    p.add_argument("--format", choices=("text", "json"), default="text")
    add_own_argument(p)


def main(args: argparse.Namespace) -> int:
    # imported here: `branchtrace run` should not pay for the reporters
    from ..reporters import crash
    from ..tracefile.tail import count_branches, last_branches
    # only the shown thread's last chunks are decoded (bounded memory on any trace)
    trace, tf = load_file(args, decode=False)
    reports = crash.to_report(trace, first=False)
    recorded: dict[int, int] | None = None
    for one in reports:
        tid = args.thread if args.thread is not None else crash.crash_thread(one)
        if tid is not None and tid in one.threads:
            # enough to fold loops in and to replay the call stack from
            one.threads[tid] = last_branches(tf, tid, max(args.last, REPLAY_WINDOW))
    if args.format == "json":
        # the JSON lists every thread's branch count and where its gaps are: one pass
        recorded = {}
        for one in reports:
            exact = []
            for tid in one.threads:
                recorded[tid], gaps = count_branches(tf, tid)
                exact.extend(gaps)
            one.gaps[:] = exact + [g for g in one.gaps if g.tid not in one.threads]
    write_to(args.output, lambda out: crash.render_all(reports, out, last=args.last,
                                                       fmt=args.format, tid=args.thread,
                                                       own=args.own, recorded=recorded))
    warn(trace)
    return 0
