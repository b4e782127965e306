"""The reaper: a small process that starts the program for the Stalker backend and waits
for it. Run as a script (``python -S -I reaper.py STATUS_FD CONTROL_FD ASLR PTRACER -- ARGV``),
it imports nothing from branchtrace, so it starts in a few tens of milliseconds.

Why a separate process: Frida injects its agent with ptrace from threads of the tracer
process. If the program were the tracer's own child, the kernel would treat those
threads as its parent too (a child traced by its parent's thread group is reported as
a ptrace child to every thread of the group): a ``waitpid`` for the exit status steals
the stops Frida waits for (its attach times out), and Frida's waits can reap the
program before we learn how it ended. With the reaper as the real parent, the tracer
never waits for the program, and the reaper always gets its exit status.

Protocol, one line each on STATUS_FD: ``ready PID ENTRY`` once the program sits at its
ELF entry point, stopped (SIGSTOP); then ``exit CODE`` or ``signal SIG CORE``; or
``error MESSAGE``. On CONTROL_FD the tracer writes ``go`` once Frida holds the
program; if CONTROL_FD closes before that, the program is killed (nobody will resume it).
"""

from __future__ import annotations

import ctypes
import os
import signal
import struct
import sys

PTRACE_PEEKDATA, PTRACE_POKEDATA, PTRACE_PEEKUSER, PTRACE_POKEUSER = 2, 5, 3, 6
PTRACE_CONT, PTRACE_DETACH, PTRACE_SEIZE, PTRACE_LISTEN = 7, 17, 0x4206, 0x4208
PTRACE_O_TRACEEXEC, PTRACE_O_EXITKILL = 0x10, 0x100000
PTRACE_EVENT_EXEC, PTRACE_EVENT_STOP = 4, 128
PR_SET_PTRACER = 0x59616D61
RIP = 16 * 8          # offset of rip in struct user_regs_struct
AT_ENTRY = 9
WALL = 0x40000000
ADDR_NO_RANDOMIZE = 0x0040000

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
_libc.ptrace.restype = ctypes.c_long


class Failed(Exception):
    pass


def ptrace(request: int, pid: int, addr: int = 0, data: int = 0) -> int:
    ctypes.set_errno(0)
    result = _libc.ptrace(request, pid, ctypes.c_void_p(addr), ctypes.c_void_p(data))
    if result == -1 and ctypes.get_errno():
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(result) & 0xFFFFFFFFFFFFFFFF


def write_byte(pid: int, address: int, value: int) -> int:
    word = ptrace(PTRACE_PEEKDATA, pid, address)
    ptrace(PTRACE_POKEDATA, pid, address, (word & ~0xFF) | value)
    return int(word & 0xFF)


def entry_point(pid: int) -> int:
    with open(f"/proc/{pid}/auxv", "rb") as f:
        raw = f.read()
    for key, value in struct.iter_unpack("<QQ", raw[: len(raw) // 16 * 16]):
        if key == AT_ENTRY:
            return int(value)
    raise Failed("no entry point in the auxiliary vector")


def initial_environment() -> dict[str, str]:
    """The environment this process was started with: Python may have changed its own
    (locale coercion sets LC_CTYPE), and the program must get exactly what we were given."""
    with open("/proc/self/environ", "rb") as f:
        raw = f.read()
    env: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[os.fsdecode(key)] = os.fsdecode(value)
    return env


def start(argv: list[str], aslr: bool, ptracer: int = 0) -> int:
    """Fork and exec ``argv``, stopped before exec; seize it; return its pid at the exec."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGQUIT,
                        signal.SIGTSTP, signal.SIGTTOU, signal.SIGTTIN):
                signal.signal(sig, signal.SIG_DFL)  # what we ignore, the program must not
            if not aslr:
                current = _libc.personality(0xFFFFFFFF)
                if current != -1:
                    _libc.personality(current | ADDR_NO_RANDOMIZE)
            if ptracer:   # run --gdb: gdb, branchtrace's child, may attach (Yama scope 1)
                _libc.prctl(PR_SET_PTRACER, ctypes.c_ulong(ptracer), 0, 0, 0)
            os.kill(os.getpid(), signal.SIGSTOP)
            os.execvpe(argv[0], argv, initial_environment())
        except OSError as err:
            os.write(write_end, str(err.errno).encode())
        finally:
            os._exit(127)
    os.close(write_end)
    try:
        _, status = os.waitpid(pid, os.WUNTRACED)
        if not os.WIFSTOPPED(status):
            raise Failed("it ended before exec")
        ptrace(PTRACE_SEIZE, pid, 0, PTRACE_O_TRACEEXEC | PTRACE_O_EXITKILL)
        os.kill(pid, signal.SIGCONT)
        while True:
            _, status = os.waitpid(pid, WALL)
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                data = os.read(read_end, 64)
                errno = int(data) if data.strip().isdigit() else 0
                raise Failed(os.strerror(errno) if errno else "it ended before exec")
            event = status >> 16
            stop = os.WSTOPSIG(status)
            if event == PTRACE_EVENT_EXEC:
                return pid
            inject = 0 if (event or stop in (signal.SIGSTOP, signal.SIGCONT)) else stop
            ptrace(PTRACE_CONT, pid, 0, inject)
    finally:
        os.close(read_end)


def run_to_entry(pid: int) -> int:
    """Breakpoint at the entry point, run to it, undo it; leave the program stopped."""
    entry = entry_point(pid)
    saved = write_byte(pid, entry, 0xCC)
    ptrace(PTRACE_CONT, pid)
    while True:
        _, status = os.waitpid(pid, WALL)
        if os.WIFEXITED(status):
            raise Failed(f"it exited with status {os.WEXITSTATUS(status)} before its entry point")
        if os.WIFSIGNALED(status):
            raise Failed(f"it was killed by signal {os.WTERMSIG(status)} before its entry point")
        sig, event = os.WSTOPSIG(status), status >> 16
        if sig == signal.SIGTRAP and event == 0 and ptrace(PTRACE_PEEKUSER, pid, RIP) == entry + 1:
            break
        if event == PTRACE_EVENT_STOP:
            ptrace(PTRACE_LISTEN if sig in (signal.SIGSTOP, signal.SIGTSTP) else PTRACE_CONT, pid)
            continue
        ptrace(PTRACE_CONT, pid, 0, 0 if event else sig)
    write_byte(pid, entry, saved)
    ptrace(PTRACE_POKEUSER, pid, RIP, entry)
    ptrace(PTRACE_DETACH, pid, 0, signal.SIGSTOP)
    _, status = os.waitpid(pid, os.WUNTRACED)
    if not os.WIFSTOPPED(status):
        raise Failed("it did not stay stopped at its entry point")
    return entry


def say(fd: int, line: str) -> None:
    try:
        os.write(fd, (line + "\n").encode("utf-8", "replace"))
    except OSError:
        pass  # the tracer is gone; the program goes on


def main() -> None:
    status_fd, control_fd, aslr = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
    ptracer = int(sys.argv[4])
    argv = sys.argv[6:]
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP, signal.SIGTTOU, signal.SIGTTIN):
        signal.signal(sig, signal.SIG_IGN)  # the terminal's signals are for the program
    pid = 0
    try:
        pid = start(argv, aslr, ptracer)
        entry = run_to_entry(pid)
    except (Failed, OSError) as err:
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except OSError:
                pass
        say(status_fd, f"error {err}")
        return
    say(status_fd, f"ready {pid} {entry}")
    go = b""
    try:
        go = os.read(control_fd, 16)
    except OSError:
        pass
    if not go.startswith(b"go"):
        os.kill(pid, signal.SIGKILL)  # nobody will resume it
    while True:
        try:
            _, status = os.waitpid(pid, 0)
        except InterruptedError:
            continue
        except ChildProcessError:
            say(status_fd, "exit -1")
            return
        if os.WIFEXITED(status):
            say(status_fd, f"exit {os.WEXITSTATUS(status)}")
            return
        if os.WIFSIGNALED(status):
            say(status_fd, f"signal {os.WTERMSIG(status)} {int(os.WCOREDUMP(status))}")
            return


if __name__ == "__main__":
    main()
