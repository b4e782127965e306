"""Snapshots of a ``run``/``attach`` in ring mode (snapshots.py): the options
(``--trigger SYMBOL[:N]``, ``--trigger-every``, ``--snapshots N``), SIGUSR2, and the
reports, written to the report destination while the program goes on."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

from ..errors import UsageError

if TYPE_CHECKING:
    from ..backends import Trigger
    from ..snapshots import SnapshotInfo, Snapshots
    from ..trace import Trace

#: The signal that asks a running ``run``/``attach`` for a snapshot (``branchtrace snapshot``).
SNAPSHOT_SIGNAL = signal.SIGUSR2


def add_snapshot_arguments(g: Any) -> None:
    from ._record import positive_int   # here: _record imports this module

    g.add_argument("--trigger", metavar="SYMBOL[:N]",
                   help="ring mode: write a snapshot (a report of every thread, and with -o "
                        "a trace file FILE.snapshot-K.btrace) at the Nth call of function "
                        "SYMBOL (default the first), and go on; also on SIGUSR2 and "
                        "`branchtrace snapshot PID`")
    g.add_argument("--trigger-every", action="store_true",
                   help="a snapshot at every call of the --trigger function from the Nth on, "
                        "at most --snapshots of them")
    g.add_argument("--snapshots", type=positive_int, default=None, metavar="N",
                   help="the most snapshots --trigger-every writes (default 16)")


def trigger_of(args: argparse.Namespace) -> Trigger | None:
    """The ``--trigger`` asked for (None: none); a usage error when malformed."""
    from ..backends import Trigger

    text = getattr(args, "trigger", None)
    if text is None:
        if getattr(args, "trigger_every", False) or getattr(args, "snapshots", None):
            raise UsageError("--trigger-every and --snapshots go with --trigger SYMBOL")
        return None
    if getattr(args, "mode", "ring") != "ring":
        raise UsageError("--trigger takes ring mode: a snapshot is the ring at one moment")
    symbol, nth = text, 1
    head, sep, tail = text.rpartition(":")
    if sep and tail.isdigit() and head and not head.endswith(":"):
        symbol, nth = head, int(tail)
        if nth < 1:
            raise UsageError(f"--trigger {text}: calls count from 1")
    if not symbol or any(c.isspace() for c in symbol):
        raise UsageError(f"--trigger {text!r}: expected a function name, SYMBOL or SYMBOL:N")
    every = bool(args.trigger_every)
    if args.snapshots is not None and not every:
        raise UsageError("--snapshots goes with --trigger-every")
    # only here: snapshots.py imports numpy (~50 ms), which a run without --trigger
    # imports later, while Frida attaches (start_early)
    from ..snapshots import DEFAULT_LIMIT

    return Trigger(symbol, nth, every, args.snapshots or DEFAULT_LIMIT if every else 1)


class SnapshotReports:
    """Where a run's snapshot reports go: the report destination of ``args`` (stderr,
    stdout, or the ``--report-to`` file, which the first report truncates and the
    others, the run's own report included, append to)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.started = False        # the --report-to file has been written to
        self._lock = threading.Lock()

    def deliver(self, trace: Trace, info: SnapshotInfo) -> None:
        from ..reporters import snapshot

        args = self.args
        with self._lock:
            if args.report != "never":
                out, close = self._open()
                try:
                    snapshot.render(trace, out, number=info.number, reason=info.reason,
                                    file=info.file, last=args.last, fmt=args.format,
                                    own=args.own)
                finally:
                    if close:
                        out.close()
                    else:
                        out.flush()
            elif info.file:
                print(f"branchtrace: snapshot {info.number}: {info.file}", file=sys.stderr)
            if info.error:
                print(f"branchtrace: snapshot {info.number}: {info.error}", file=sys.stderr)

    def _open(self) -> tuple[IO[str], bool]:
        path = self.args.report_to
        if path is None:
            return sys.stderr, False
        if path == "-":
            return sys.stdout, False
        mode = "a" if self.started else "w"
        self.started = True
        return open(path, mode, encoding="utf-8"), True


def make_snapshots(args: argparse.Namespace) -> tuple[Snapshots, SnapshotReports]:
    from ..snapshots import Snapshots

    reports = SnapshotReports(args)
    return Snapshots(reports.deliver, getattr(args, "output", None)), reports


def on_snapshot_signal(snapshots: Snapshots, mode: str) -> Any:
    """Take SIGUSR2 as a request for a snapshot; the previous handler (to put back)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        if mode != "ring":
            _say("a snapshot takes ring mode (this run streams every branch to its file)")
        elif not snapshots.request("SIGUSR2"):
            _say("no snapshot: the program is not being traced yet (or any more)")

    return signal.signal(SNAPSHOT_SIGNAL, handler)


def _say(text: str) -> None:
    try:
        sys.stderr.write(f"branchtrace: {text}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
