"""What ``run`` and ``attach`` share: the recording options and the report at the end."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import signal
import sys
import threading
import time
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

from ..errors import BranchtraceError, UsageError
from ..reporters.base import check_output
from ..store.sizes import format_bytes, parse_byte_size, parse_size
from ._snapshots import add_snapshot_arguments, make_snapshots, on_snapshot_signal, trigger_of

if TYPE_CHECKING:
    from ..backends import Backend, Choice, Target
    from ..recorder import RecordConfig
    from ..trace import Trace


class ProgressLine:
    """A one-line progress display on a terminal: records, file size, rate; redrawn at
    most ``hz`` times a second (it is called from the thread that drains the store)."""

    def __init__(self, out: IO[str], hz: float = 4.0) -> None:
        self.out = out
        self.period = 1.0 / hz
        self.start = time.monotonic()
        self.shown = 0.0
        self.drawn = False
        self._lock = threading.Lock()

    def progress(self, records: int, file_bytes: int) -> None:
        now = time.monotonic()
        if now - self.shown < self.period:
            return
        with self._lock:
            self.shown = now
            rate = records / max(now - self.start, 1e-9)
            self.out.write(f"\r\x1b[Kbranchtrace: {records:,} records, "
                           f"{format_bytes(file_bytes)} written, {rate:,.0f} records/s")
            self.out.flush()
            self.drawn = True

    def finish(self) -> None:
        """Erase the line (the report, if any, comes next)."""
        with self._lock:
            if self.drawn:
                self.out.write("\r\x1b[K")
                self.out.flush()
            self.drawn = False
            self.shown = float("inf")


def add_own_argument(p: Any) -> None:
    """--own MODULE,...: modules that count as the program's own in a crash report."""
    p.add_argument("--own", type=lambda v: tuple(x for x in v.split(",") if x), default=(),
                   metavar="MODULE[,MODULE...]",
                   help="crash report: modules (base names or paths) that count as the "
                        "program's own besides its executable, for 'the program's own last "
                        "steps' of a crash in a library")


#: Branches per thread ``run`` keeps for its report: the call stack is replayed from them.
REPLAY_WINDOW = 65536


def same_file(a: str, b: str) -> bool:
    """Whether paths ``a`` and ``b`` name one existing file (a link to it included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, not {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, not {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, not {text!r}")
    return value


def add_record_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("recording")
    g.add_argument("--backend", default="auto",
                   help="auto (default; or $BRANCHTRACE_BACKEND), or a name from `branchtrace doctor`")
    g.add_argument("--mode", choices=("ring", "stream"), default="ring",
                   help="ring: keep the newest records per thread (default); "
                        "stream: lossless, the program waits when the buffer is full")
    g.add_argument("--buffer", metavar="SIZE",
                   help="per-thread buffer: records (65536, 64K, 1M) or bytes (16MiB); "
                        "default 64K records in ring mode, 4MiB in stream mode")
    g.add_argument("--memory-limit", metavar="BYTES",
                   help="most memory the buffers may take (default: what the machine can give)")
    g.add_argument("--start", metavar="SYMBOL",
                   help="ptrace: run at full speed to SYMBOL and record from there "
                        "(default main when the executable has it; 'entry' for the first instruction)")
    g.add_argument("-o", "--output", metavar="FILE",
                   help="also write the trace to FILE (mode 0600; an existing file is "
                        "overwritten): in stream mode while the program runs, in ring mode at "
                        "the end; read it with branchtrace.open(FILE)")
    g.add_argument("--only", metavar="MODULE[,MODULE...]", default="",
                   help="stalker: report only branches from or into these modules "
                        "(file names like myprog,libfoo.so; default: every module)")
    g.add_argument("--disable-randomization", action="store_true",
                   help="start the program with address-space randomization off (as GDB does), "
                        "so addresses repeat from run to run")
    g.add_argument("--no-follow-children", dest="follow_children", action="store_false",
                   help="trace only the program, not the processes it starts (fork, vfork, "
                        "posix_spawn, ...): they run untraced, and a note says how many")
    g.add_argument("--smc-check", choices=("none", "all"), default="none",
                   help="stalker: 'all' checks every block's code before it runs, so code the "
                        "program rewrites after running it (a JIT's, java's) runs as "
                        "rewritten; slower (no block trusted, no cache of blocks). Default "
                        "'none': such code may run as first compiled (valgrind's option of "
                        "the same name)")
    add_snapshot_arguments(p.add_argument_group("snapshots (ring mode)"))
    r = p.add_argument_group("report")
    r.add_argument("--last", type=positive_int, default=16, metavar="N",
                   help="how many lines of the last branches to show, loops folded "
                        "(default 16)")
    r.add_argument("--format", choices=("text", "json"), default="text")
    add_own_argument(r)
    r.add_argument("--report", choices=("crash", "always", "never"), default="crash",
                   help="when to print the report: when the program dies of a signal "
                        "(default), always, or never")
    r.add_argument("--report-to", metavar="PATH", default=None,
                   help="write the report to PATH ('-' for stdout; default stderr)")


def check_before_start(args: argparse.Namespace, program_name: str | None = None) -> None:
    """The checks that need no backend: sizes, the trace file's and the report's paths
    (neither the other one nor ``program_name``, the program to run). They fail in one
    line before any backend is probed or any program started."""
    if args.buffer is not None:
        parse_size(args.buffer)
    if args.memory_limit is not None:
        parse_byte_size(args.memory_limit)
    output = getattr(args, "output", None)
    if output is not None:
        parent = os.path.dirname(os.path.abspath(output))
        if not os.path.isdir(parent):
            raise UsageError(f"cannot write the trace file {output}: No such file or directory")
        if os.path.islink(output):
            raise UsageError(f"cannot write the trace file {output}: it is a symbolic link "
                             "(not following it)")
        if os.path.isdir(output):
            raise UsageError(f"cannot write the trace file {output}: Is a directory")
        if args.report_to not in (None, "-") and (
                os.path.abspath(args.report_to) == os.path.abspath(output)
                or same_file(args.report_to, output)):
            raise UsageError(f"--report-to and -o name the same file {output}")
        program = shutil.which(program_name) if program_name else None
        if program is not None and same_file(program, output):
            raise UsageError(f"-o {output} is the program to run: choose another name")
    check_report_path(args.report_to)


def check_report_path(path: str | None) -> None:
    """Fail now, before anything runs, if the report could not be written to ``path``."""
    if path is not None:
        check_output(path, "--report-to")


def _open_report(path: str | None, append: bool = False) -> tuple[IO[str], bool]:
    if path is None:
        return sys.stderr, False
    if path == "-":
        return sys.stdout, False
    try:
        return open(path, "a" if append else "w", encoding="utf-8"), True
    except OSError as err:
        raise UsageError(f"--report-to: cannot write {path}: {err.strerror or err}") from None


def _write_report(traces: list[Trace], args: argparse.Namespace, append: bool = False) -> None:
    from ..reporters import crash  # only when there is a report to write

    out, close = _open_report(args.report_to, append)
    try:
        try:
            crash.render_all(traces, out, last=args.last, fmt=args.format, own=args.own)
        finally:
            if close:
                out.close()
            else:
                out.flush()
    except BrokenPipeError:
        raise
    except OSError as err:
        raise UsageError(f"cannot write the report to {args.report_to or 'stderr'}: "
                         f"{err.strerror or err}") from None


def record_and_report(args: argparse.Namespace, target: Target, duration: float | None = None) -> int:
    """Record ``target`` with the options in ``args``, print the report, return the exit code."""
    from ..backends import select

    check_before_start(args, target.argv[0] if target.argv else None)
    trigger = trigger_of(args)
    choice = select(args.backend)
    target = _one_blas_thread(target)
    if choice.backend.name == "stalker":
        from ..backends.stalker import fridaload

        fridaload.defer_asyncio = True    # ~20 ms less before Frida's attach starts
    try:
        # the stalker backend starts the program and Frida's attach now, while Python
        # imports the rest (other backends start nothing here)
        choice.backend.start_early(target)
        from ..recorder import RecordConfig

        only = tuple(name for name in args.only.split(",") if name)
        config = RecordConfig(backend=args.backend, mode=args.mode, buffer=args.buffer,
                              memory_limit=args.memory_limit, start=args.start,
                              duration=duration, only=only,
                              follow_children=args.follow_children,
                              smc_check=args.smc_check == "all",
                              hold_on_crash=bool(getattr(args, "gdb", False)),
                              trigger=trigger)
        return _record_and_report(args, target, config, choice)
    finally:
        choice.backend.cancel_early()   # if the program was started but not recorded


def _record_and_report(args: argparse.Namespace, target: Target, config: RecordConfig,
                       choice: Choice) -> int:
    from ..recorder import record

    interrupted = []
    previous: Any = None
    snapshots, snapshot_reports = make_snapshots(args)
    previous_usr2 = on_snapshot_signal(snapshots, args.mode)

    def on_start(backend: Backend, reasons: tuple[str, ...]) -> None:
        nonlocal previous

        def on_sigint(signum: int, frame: FrameType | None) -> None:
            interrupted.append(signum)
            backend.interrupt()

        previous = signal.signal(signal.SIGINT, on_sigint)

    output = getattr(args, "output", None)
    temporary = None
    if config.hold_on_crash and output is None:
        from ._gdb import temporary_trace

        output = temporary = temporary_trace()
    progress = None
    if output is not None and args.mode == "stream" and sys.stderr.isatty():
        progress = ProgressLine(sys.stderr)
    try:
        try:
            # memory holds only what the report needs (a file, if any, has everything):
            # a stream without a file would otherwise keep every branch of the run. The
            # report shows the last --last branches, and replays the call stack from the
            # newest REPLAY_WINDOW (what a ring of the default size holds)
            trace = record(target, config, on_start=on_start, output=output,
                           keep=max(args.last, REPLAY_WINDOW), listener=progress,
                           chosen=choice, snapshots=snapshots)
        except BaseException:
            if temporary is not None:
                os.unlink(temporary)
            raise
        finally:
            if progress is not None:
                progress.finish()
        ex = trace.exit
        # the first process's report when asked or when it ended unusually; the report of
        # every process that died of a signal (the exit status stays the first one's)
        first = args.report == "always" or (args.report == "crash" and ex.status == "signaled") \
            or (args.report != "never" and ex.status == "detached")
        # the reporter (~20 ms of imports) only when there may be a report to write
        if args.report != "never" and (
                first or any(p.exit.status == "signaled" for p in trace.processes)):
            from ..reporters.crash import crashed, to_report

            if first or crashed(trace, quiet_pipes=True):
                try:
                    _write_report(to_report(trace, first=first, quiet_pipes=True), args,
                                  append=snapshot_reports.started)
                except BrokenPipeError:
                    raise
                except (MemoryError, BranchtraceError, OSError, ValueError) as err:
                    # the program's status matters more than our report: say why, in a line
                    print(f"branchtrace: the report could not be made: {_why(err)}",
                          file=sys.stderr)
    finally:
        # only now: a second Ctrl-C while we detach or report is the program's (it
        # kills it; the backend reports that), never a KeyboardInterrupt of ours
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGUSR2, previous_usr2)
    for error in snapshots.errors:
        print(f"branchtrace: {error}", file=sys.stderr)
    if args.report != "never" and ex.shell_status != 0:
        from ..store.blocks import ANON_CODE_NOTE

        if ANON_CODE_NOTE in trace.notes:   # it may have failed because of us: say so
            print(f"branchtrace: note: {ANON_CODE_NOTE}", file=sys.stderr)
    if temporary is not None and not ex.held:
        os.unlink(temporary)
    if ex.held:
        from ._gdb import hand_over

        assert output is not None
        try:
            return hand_over(trace, output, args.gdb, args.gdb_args)
        finally:
            if temporary is not None:
                os.unlink(temporary)
    if ex.status == "detached":
        return 130 if interrupted else 0
    return ex.shell_status


def _why(err: BaseException) -> str:
    if isinstance(err, MemoryError):
        return "out of memory"
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def _one_blas_thread(target: Target) -> Target:
    """numpy's OpenBLAS starts its threads while we import numpy, holding a lock, as
    Frida's threads (started by start_early) may fork: a child forked then, which forks
    again, waited for that lock for ever (its holder is not in the child; seen once in
    80 corpus runs: `branchtrace run` hung in Frida's helper fork). branchtrace does no
    linear algebra: one OpenBLAS thread, so the lock is held for no time at all. The
    program gets the environment it would have had."""
    if "OPENBLAS_NUM_THREADS" in os.environ:
        return target
    if target.argv and target.env is None:
        target = dataclasses.replace(target, env=dict(os.environ))
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    return target
