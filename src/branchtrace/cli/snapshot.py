"""Ask a running `branchtrace run` or `attach` (ring mode) for a snapshot.

    branchtrace snapshot PID

PID is that of the branchtrace process, or of the program it traces (found through
its parents when `branchtrace run` started it, or through the ptrace tracer that steps
it). The branchtrace process gets SIGUSR2, as `kill -USR2` would give it: it writes
the report of the snapshot (every thread's last branches and call stack) where its
reports go (stderr unless --report-to), and with -o a trace file NAME.snapshot-N.btrace;
the program goes on. (A program `branchtrace attach` follows with the stalker backend
has no such link to it: give branchtrace's own pid.)
"""

from __future__ import annotations

import argparse
import os
import sys

from ..backends.linux.program import status_field
from ..errors import TargetError, UsageError
from ._snapshots import SNAPSHOT_SIGNAL

NAME = "snapshot"

#: How far up the parents of the program to look for its branchtrace.
_MAX_DEPTH = 8


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pid", metavar="PID", help="a branchtrace run/attach, or the program it traces")


def main(args: argparse.Namespace) -> int:
    try:
        pid = int(args.pid)
    except ValueError:
        raise UsageError(f"expected a process id, not {args.pid!r}") from None
    if pid <= 0:
        raise UsageError(f"expected a process id, not {args.pid!r}")
    if not os.path.exists(f"/proc/{pid}"):
        raise TargetError(f"no process with pid {pid}")
    recorder = find_recorder(pid)
    try:
        os.kill(recorder, SNAPSHOT_SIGNAL)
    except ProcessLookupError:
        raise TargetError(f"branchtrace (pid {recorder}) has ended") from None
    except PermissionError:
        raise TargetError(f"cannot signal branchtrace (pid {recorder}): "
                          "it belongs to another user") from None
    what = "" if recorder == pid else f" (tracing pid {pid})"
    print(f"branchtrace: asked branchtrace pid {recorder}{what} for a snapshot; "
          "its report goes where that run's reports go", file=sys.stderr)
    return 0


def find_recorder(pid: int) -> int:
    """The ``branchtrace run``/``attach`` process that ``pid`` is or traces; a one-line
    error when there is none."""
    seen: set[int] = set()
    todo = [pid]
    tracer = status_field(pid, "TracerPid") or 0
    if tracer:
        todo.append(tracer)
    for start in todo:
        p, depth = start, 0
        while p > 1 and p not in seen and depth <= _MAX_DEPTH:
            seen.add(p)
            if _is_recorder(p):
                return _outermost(p)
            p, depth = (status_field(p, "PPid") or 0), depth + 1
    raise UsageError(f"pid {pid} is neither a branchtrace run or attach nor a program "
                     "one of them traces (give branchtrace's own pid)")


def _outermost(pid: int) -> int:
    """The ptrace backend's tracer process is a fork of branchtrace (the same command
    line, SIGUSR2 means stop there): its parent is the one to ask."""
    argv = _argv(pid)
    parent = status_field(pid, "PPid") or 0
    while parent > 1 and _argv(parent) == argv:
        pid, parent = parent, (status_field(parent, "PPid") or 0)
    return pid


def _is_recorder(pid: int) -> bool:
    if pid == os.getpid():
        return False
    argv = _argv(pid)
    for k, word in enumerate(argv):
        named = os.path.basename(word) == "branchtrace" or (
            word == "branchtrace" and k > 0 and argv[k - 1] == "-m")
        if named:
            rest = [w for w in argv[k + 1:] if not w.startswith("-")]
            return bool(rest) and rest[0] in ("run", "attach")
    return False


def _argv(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [w.decode("utf-8", "replace") for w in f.read().split(b"\0") if w]
    except OSError:
        return []
