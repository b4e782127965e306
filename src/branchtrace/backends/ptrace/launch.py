"""Getting a process under ptrace: spawn a program traced from its exec, or seize every
thread of a running one. Errors are one-line :class:`TargetError` messages."""

from __future__ import annotations

import errno
import os
import signal

from ...errors import CannotExecute, ProgramNotFound, TargetError
from ..linux import sys as pt

_ESRCH, _EPERM = 3, 1


def spawn_traced(argv: tuple[str, ...], env: dict[str, str] | None, options: int,
                 disable_aslr: bool = False, ptracer: int | None = None) -> int:
    """Fork and exec ``argv``, seized with ``options``; return its pid, stopped at the exec.

    The child stops itself before exec so that we can PTRACE_SEIZE it (SEIZE, unlike
    TRACEME, lets us PTRACE_INTERRUPT it later); an exec failure comes back on a pipe.
    ``ptracer``: a pid that, with its descendants, may attach to the program too (Yama).
    """
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # the child: only async-signal-safe work from here on, then exec
        try:
            os.close(read_end)
            for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)  # Python ignores some; the program must not
            if disable_aslr:
                pt.disable_aslr()
            if ptracer is not None:
                pt.allow_ptracer(ptracer)
            os.kill(os.getpid(), signal.SIGSTOP)
            if env is None:
                os.execvp(argv[0], list(argv))
            else:
                os.execvpe(argv[0], list(argv), env)
        except OSError as exc:
            os.write(write_end, str(exc.errno).encode())
        finally:
            os._exit(127)
    os.close(write_end)
    try:
        _, status = os.waitpid(pid, os.WUNTRACED)
        if not os.WIFSTOPPED(status):
            raise TargetError(f"could not start {argv[0]}: it ended before exec")
        pt.ptrace(pt.PTRACE_SEIZE, pid, 0, options)
        os.kill(pid, signal.SIGCONT)
        _wait_for_exec(pid, argv[0], read_end)
    finally:
        os.close(read_end)
    return pid


def _wait_for_exec(pid: int, program: str, errpipe: int) -> None:
    while True:
        _, status = os.waitpid(pid, pt.WALL)
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            data = os.read(errpipe, 64)
            err = int(data) if data.strip().isdigit() else 0
            reason = os.strerror(err) if err else "it ended before exec"
            kind = ProgramNotFound if err == errno.ENOENT else CannotExecute if err \
                else TargetError
            raise kind(f"cannot run {program}: {reason}")
        event = status >> 16
        sig = os.WSTOPSIG(status)
        if event == pt.PTRACE_EVENT_EXEC:
            return
        # the group-stop we were seized in, and the SIGCONT that ended it: swallow both
        inject = 0 if (event or sig in (signal.SIGSTOP, signal.SIGCONT)) else sig
        pt.ptrace(pt.PTRACE_CONT, pid, 0, inject)


def seize_all(pid: int, options: int) -> list[int]:
    """Seize and interrupt every thread of ``pid`` (threads born meanwhile included)."""
    if pid <= 0 or not os.path.exists(f"/proc/{pid}"):
        raise TargetError(f"no process with pid {pid}")
    if pid == os.getpid():
        raise TargetError("branchtrace cannot trace itself")
    seized: list[int] = []
    gone: set[int] = set()
    while True:
        try:
            tids = {int(t) for t in os.listdir(f"/proc/{pid}/task")}
        except OSError:
            _release(seized)
            raise TargetError(f"no process with pid {pid}") from None
        new = sorted(tids - set(seized) - gone)
        if not new:
            return seized
        for tid in new:
            try:
                pt.ptrace(pt.PTRACE_SEIZE, tid, 0, options)
            except OSError as exc:
                if exc.errno == _ESRCH and tid != pid:  # the thread just ended
                    gone.add(tid)
                    continue
                _release(seized)
                raise TargetError(attach_error(pid, exc)) from None
            seized.append(tid)
            pt.ptrace(pt.PTRACE_INTERRUPT, tid)


def _release(seized: list[int]) -> None:
    """Undo a partial attach: the threads we seized go on as before."""
    for tid in seized:
        try:
            pt.ptrace(pt.PTRACE_DETACH, tid)
        except OSError:
            pass


def attach_error(pid: int, exc: OSError) -> str:
    """Why we may not trace ``pid``, in one line."""
    from ..linux.permissions import denied_reason

    if exc.errno == _ESRCH:
        return f"no process with pid {pid}"
    reason = exc.strerror or str(exc)
    if exc.errno == _EPERM:
        return f"cannot trace pid {pid}: {reason}: {denied_reason(pid)}"
    return f"cannot trace pid {pid}: {reason}"
