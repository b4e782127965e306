"""``run --gdb``: hand a program stopped at its crash to GDB, with the trace loaded.

The backend (``RecordOptions.hold_on_crash``) stops the program before its crash signal
is delivered, removes its tracing and leaves it in group-stop; the recorder writes the
trace file (``-o``, else a temporary file, removed at the end). Then GDB attaches:

    gdb -q -x "$(branchtrace gdb-init)" -ex 'bt-load FILE' [GDB-ARGS...] -p PID

When GDB ends (it detaches from a process it attached to, which stays stopped), the
program is resumed with its crash to come: a fault comes again at the faulting
instruction, a signal sent by kill or raise is sent again to its thread. It dies of it
(unless the user changed its course in GDB), and ``run`` exits with its status.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from types import FrameType
from typing import TYPE_CHECKING

from ..errors import UsageError

if TYPE_CHECKING:
    from ..trace import Trace

#: Extra GDB arguments, when --gdb-args is not given (split as a shell would).
ENV_GDB_ARGS = "BRANCHTRACE_GDB_ARGS"
#: Signals a fault raises again when the program runs its faulting instruction again.
_FAULTS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE}


def find_gdb() -> str:
    """The gdb to start, or a one-line error before anything runs."""
    gdb = shutil.which("gdb")
    if gdb is None:
        raise UsageError("--gdb: gdb is not installed (not found on PATH)")
    return gdb


def check_attach() -> None:
    """Fail now if Yama would forbid gdb to attach to the program (scope 1, descendants
    only, is handled: the program lets branchtrace and its children attach)."""
    from ..backends.linux.permissions import YAMA_SCOPE, has_cap_sys_ptrace, ptrace_scope

    scope = ptrace_scope()
    if scope == 3 or (scope == 2 and not has_cap_sys_ptrace()):
        raise UsageError(f"--gdb: gdb could not attach to the program: {YAMA_SCOPE} is {scope} "
                         + ("(no process may be traced)" if scope == 3
                            else "(only with CAP_SYS_PTRACE, which branchtrace lacks)"))


def gdb_extra_args(given: str | None) -> list[str]:
    text = given if given is not None else os.environ.get(ENV_GDB_ARGS, "")
    try:
        return shlex.split(text)
    except ValueError as err:
        raise UsageError(f"--gdb-args: {err}") from None


def temporary_trace() -> str:
    fd, path = tempfile.mkstemp(prefix="branchtrace-gdb-", suffix=".btrace")
    os.close(fd)
    return path


def gdb_argv(gdb: str, init: str, trace_file: str, pid: int, tid: int,
             extra: list[str], several: bool = False) -> list[str]:
    """GDB attached to ``pid``, the trace loaded (only ``pid``'s part of it when it has
    ``several`` processes), the crashed thread ``tid`` selected."""
    select = [] if tid == pid else [
        "-ex", "python [t.switch() for t in gdb.selected_inferior().threads() "
               f"if t.ptid[1] == {tid}]"]
    load = f"bt-load {trace_file}" + (f" {pid}" if several else "")
    return [gdb, "-q", "-x", init, "-ex", load, *select, *extra, "-p", str(pid)]


def hand_over(trace: Trace, trace_file: str, gdb: str, extra: list[str]) -> int:
    """Start GDB on the held program; when it ends, let the crash happen; the status."""
    from ..reporters.crash import signal_name
    from .gdb_init import command_file

    ex = trace.exit
    pid, sig = trace.pid, ex.signal or signal.SIGKILL
    name = signal_name(sig)
    print(f"branchtrace: pid {pid} stopped before {name} was delivered; starting gdb with "
          f"the trace {trace_file} loaded (bt, bt-calls, bt-insns, bt-crash); when gdb "
          f"quits, {name} is delivered", file=sys.stderr, flush=True)
    tid = ex.tid or pid
    argv = gdb_argv(gdb, str(command_file()), trace_file, pid, tid, extra,
                    several=len(trace.processes) > 1)
    previous = signal.signal(signal.SIGINT, _ignore)   # Ctrl-C is gdb's now
    try:
        _run_gdb(argv)
    except OSError as err:
        print(f"branchtrace: cannot start gdb: {err.strerror or err}", file=sys.stderr)
    finally:
        signal.signal(signal.SIGINT, previous)
    return _deliver(pid, tid, sig, requeue=not (sig in _FAULTS and
                                                          ex.fault_address is not None))


def _ignore(signum: int, frame: FrameType | None) -> None:
    pass


def _run_gdb(argv: list[str]) -> None:
    """GDB, in a process group of its own that has the terminal (as a shell runs a job)
    when ours has it: a Ctrl-C typed at GDB's prompt then reaches GDB only, not the
    stopped program, which would otherwise die of it instead of its crash when resumed
    (GDB hands the terminal to the program itself while it runs it)."""
    tty = _our_terminal()
    if tty is None:
        subprocess.run(argv)
        return
    gdb = subprocess.Popen(argv, process_group=0)
    previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)   # to take it back
    try:
        try:
            os.tcsetpgrp(tty, gdb.pid)
        except OSError:
            pass
        gdb.wait()
    finally:
        try:
            os.tcsetpgrp(tty, os.getpgrp())
        except OSError:
            pass
        signal.signal(signal.SIGTTOU, previous)


def _our_terminal() -> int | None:
    """stdin's descriptor when it is a terminal whose foreground is our process group."""
    try:
        fd = sys.stdin.fileno()
        if os.isatty(fd) and os.tcgetpgrp(fd) == os.getpgrp():
            return fd
    except (OSError, ValueError, AttributeError):
        pass
    return None


def _state(pid: int) -> str | None:
    """The process's state letter (/proc/PID/stat), None once it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return None
    return None if state in ("Z", "X") else state


def _deliver(pid: int, tid: int, sig: int, requeue: bool) -> int:
    """The program after gdb: if still stopped, resume it with its signal to come; wait
    for its end (it is our child: branchtrace is its subreaper); the shell's status."""
    from ..backends.linux import sys as pt

    if _state(pid) == "T":
        try:
            if requeue:
                pt.tgkill(pid, tid, sig)
            os.kill(pid, signal.SIGCONT)
        except OSError:
            pass
    try:
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
    except ChildProcessError:   # not our child: watch it go; how it ended is not known
        while _state(pid) is not None:
            time.sleep(0.05)
        return 128 + sig
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)
