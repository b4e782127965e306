"""``run --gdb`` on the Stalker backend: hold the program at its crash, alive and stopped.

Under Stalker a crashing thread is in Frida's signal handler, its pc in Stalker's copy
of the code. To hand the program to GDB as it really was:

1. the agent (crash.js) sends its crash report with ``hold``; when we agree, it parks
   the thread: it returns from the handler to a ``jmp $`` of its own (a page of the
   program's, not Frida's), every register the program's but the pc, out of Stalker
   (``Stalker.unfollow()``), and says so (``parked``: the page's address);
2. Frida detaches, and its threads and its injector's clean-up (a ptrace attach of
   its own) end, while the thread spins there, touching nothing;
3. :func:`hold_parked` seizes the thread, puts its pc back on the program's faulting
   instruction, and lets it go with SIGSTOP pending: the whole program enters
   group-stop before that instruction runs again. It faults again when resumed (an
   abort's signal is sent again by whoever resumes it, cli/_gdb.py).

All ptrace requests are made from the one thread that calls :func:`hold_parked`.
"""

from __future__ import annotations

import os
import signal
import time

from ..linux import sys as pt

_POLL = 0.005


def _tracer(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("TracerPid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return -1


def _settle(pid: int, program_threads: set[int], patience: float) -> None:
    """Until Frida's threads have left the program and nobody traces it (Frida's
    injector cleans up with ptrace after the agent is unloaded), for a while."""
    deadline = time.monotonic() + patience
    quiet_since: float | None = None
    while time.monotonic() < deadline:
        try:
            tasks = {int(t) for t in os.listdir(f"/proc/{pid}/task")}
        except OSError:
            return
        if tasks <= program_threads and _tracer(pid) == 0:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since > 0.1:
                return
        else:
            quiet_since = None
        time.sleep(_POLL)


def hold_parked(pid: int, tid: int, parked_pc: int, real_pc: int,
                program_threads: set[int], patience: float = 3.0) -> str | None:
    """Stop thread ``tid`` of ``pid``, parked at ``parked_pc``, back at ``real_pc`` and
    the whole program with it (group-stop, no tracer). None when held, else why not
    (the caller then ends the program with its signal: it may still be parked)."""
    _settle(pid, program_threads, patience)
    try:
        pt.ptrace(pt.PTRACE_SEIZE, tid, 0, 0)
    except OSError as err:
        return f"cannot seize thread {tid}: {err.strerror or err}"
    try:
        pt.ptrace(pt.PTRACE_INTERRUPT, tid)
        while True:
            _, status = os.waitpid(tid, pt.WALL)
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                return "the crashing thread ended"
            sig, event = os.WSTOPSIG(status), status >> 16
            if event == pt.PTRACE_EVENT_STOP:
                break
            pt.ptrace(pt.PTRACE_CONT, tid, 0, 0 if event else sig)  # not ours: pass it on
        pc = pt.peekuser(tid, pt.RIP) & 0xFFFF_FFFF_FFFF_FFFF
        pt.pokeuser(tid, pt.RIP, real_pc)
        if pc != parked_pc:
            return f"the crashing thread was not where it was parked (pc {pc:#x})"
        os.kill(pid, signal.SIGSTOP)   # taken as the thread goes: before any instruction
        return None
    except OSError as err:
        return f"cannot hold thread {tid}: {err.strerror or err}"
    finally:
        try:
            pt.ptrace(pt.PTRACE_DETACH, tid, 0, 0)
        except OSError:
            pass
