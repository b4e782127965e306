"""Holding a process at the address it is to be followed from, whatever wakes it.

A process we hand to Frida (an exec'd image at its entry point, a fork child at fork's
return address) must not run a single instruction of its own before our agent follows
it. It used to wait for Frida in a group stop (SIGSTOP). A stop is not a hold: Frida
tears down the agent of an image an exec replaced by seizing the pid for a moment (its
cleanup session), sends a group-stopped process SIGCONT, and detaches. Measured with
``perf record -e syscalls:sys_enter_ptrace,signal:signal_generate`` on a shell pipeline
(``tr | cut | sort | uniq``, 1 run in ~60 under a CPU hog): the new image then ran on
natively into ``main``, ``setlocale`` and ``malloc``; our own attach, refused (EPERM)
while the cleanup held the pid, fell back to Frida's /proc/mem injector, which takes
the first thread that calls ``malloc``, there inside setlocale's lock, and the agent's
start waited for that lock for ever: the traced pipeline hung (CI's corpus run, 900 s).
A group stop is also a trap of its own: a detach from it wakes the thread for a moment
before it stops again, and a Frida session that seizes it then (it sees state R)
interrupts it, gets the group stop instead of its interrupt, gives up after 5 s and
stays its tracer: every later attach fails.

So the process is *parked* instead, never stopped: while our catcher still traces the
thread, the two bytes at the place become ``jmp $`` (EB FE, a jump to itself), and the
catcher detaches it running. It spins in place, holding nothing: every Frida session
finds a running process and interrupts it there, and whatever lets it go, it spins on.
Once Frida's attach is done, :func:`unpark` seizes the main thread again, checks it is
at the place and puts the two bytes back; while it holds the thread there, the host has
the agent arm its entry probe (the agent's own threads run: only the main thread is
held), then lets it go, into the probe. :func:`unpark` is also how every path that
gives up on a child lets it go (:func:`.launch.continue_if_stopped` calls it): a parked
process is not left spinning. It costs a spinning CPU for the attach (~0.1-0.3 s).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
import time
from typing import Callable, TypeVar

from ..linux import sys as pt

SPIN = 0xFEEB            # the bytes EB FE (little-endian): jmp to itself
_POLL = 0.0005
_SEIZE_RETRY = 2.0       # Frida may still be detaching when its attach returns

T = TypeVar("T")

_lock = threading.Lock()
_parked: dict[int, tuple[int, int]] = {}   # pid -> (address, the two bytes that were there)


class UnparkError(Exception):
    pass


def park(pid: int, address: int) -> None:
    """``pid``'s only thread is stopped under our ptrace with its ip at ``address``:
    make ``address`` a jump to itself (undone by :func:`unpark`)."""
    word = pt.peekdata(pid, address)
    pt.pokedata(pid, address, (word & ~0xFFFF) | SPIN)
    with _lock:
        _parked[pid] = (address, word & 0xFFFF)


def is_parked(pid: int) -> bool:
    with _lock:
        return pid in _parked


def forget(pid: int) -> None:
    """The process ended: nothing to undo."""
    with _lock:
        _parked.pop(pid, None)


def unpark(pid: int, while_held: Callable[[], None] | None = None,
           timeout: float = 10.0) -> None:
    """Put back what :func:`park` wrote in ``pid`` and let it run (nothing to do if it
    is not parked; a group stop it was in is ended). ``while_held`` runs while the
    thread is held at the place with its code back (the host arms the agent's entry
    probe then); only the main thread is held, the agent's threads run. Raises :class:`UnparkError` when the thread is not at
    the place (the bytes are put back and it is let go all the same; ``while_held`` is
    not run)."""
    with _lock:
        held = _parked.get(pid)
    if held is None:
        return
    address, saved = held
    deadline = time.monotonic() + timeout
    try:
        _seize(pid, deadline)
    except OSError as err:
        if err.errno == errno.ESRCH:
            forget(pid)
            return
        raise UnparkError(f"cannot hold pid {pid} again: {err.strerror}") from None
    where, stopped = 0, False
    try:
        try:
            stopped = _until_trapped(pid, deadline)
            where = pt.peekuser(pid, pt.RIP)
            word = pt.peekdata(pid, address)
            pt.pokedata(pid, address, (word & ~0xFFFF) | saved)
            forget(pid)
            if where == address and while_held is not None:
                while_held()
        finally:
            pt.ptrace(pt.PTRACE_DETACH, pid)
            if stopped:   # it was in a group stop: it is let go, as from a spin
                os.kill(pid, signal.SIGCONT)
    except (OSError, UnparkError) as err:
        if isinstance(err, OSError) and err.errno == errno.ESRCH:
            forget(pid)
            return
        raise UnparkError(f"cannot give pid {pid} back its code: {err}") from None
    if where != address:
        raise UnparkError(f"pid {pid} was at {where:#x}, not at {address:#x}")


def release(pid: int) -> None:
    """Every give-up path: a parked ``pid`` gets its code back and runs on, wherever
    it is (nothing to do if it is not parked)."""
    with contextlib.suppress(UnparkError):
        unpark(pid)


def _seize(pid: int, deadline: float) -> None:
    until = min(deadline, time.monotonic() + _SEIZE_RETRY)
    while True:
        try:
            pt.ptrace(pt.PTRACE_SEIZE, pid, 0, 0)
            pt.ptrace(pt.PTRACE_INTERRUPT, pid)
            return
        except OSError as err:
            if err.errno != errno.EPERM or time.monotonic() > until:
                raise
            time.sleep(0.002)


def _wait(pid: int, deadline: float) -> int:
    while True:
        done, status = os.waitpid(pid, os.WNOHANG | pt.WALL)
        if done == pid:
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                raise OSError(errno.ESRCH, "the process ended")
            return status
        if time.monotonic() > deadline:
            raise UnparkError("it did not stop")
        time.sleep(_POLL)


def _until_trapped(pid: int, deadline: float) -> bool:
    """Until the seized thread is in a ptrace stop we may read it in; True if that stop
    is a group stop (not our interrupt). A signal that comes meanwhile is delivered (its
    handler runs natively, back to the spin)."""
    while True:
        status = _wait(pid, deadline)
        event, sig = status >> 16, os.WSTOPSIG(status)
        if event == pt.PTRACE_EVENT_STOP:
            return sig in (signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)
        pt.ptrace(pt.PTRACE_CONT, pid, 0, 0 if event else sig)


ATTACHES = 4
_UNTRACED_WAIT = 2.0


def attach_parked(pid: int, attach: Callable[[], T]) -> T:
    """Frida's attach to a parked ``pid``, tried again when it fails and left nothing
    tracing the process: it spins in place, so a failed attach left it as it was. Each
    try waits until nothing traces the process (Frida's cleanup of the agent of an image
    an exec replaced seizes the pid for a moment now and then; an attach meanwhile gets
    EPERM and falls back to Frida's /proc/mem injector, which waits for a call to malloc
    that a parked thread never makes: "timed out waiting for the target to trigger the
    injected stub")."""
    for attempt in range(ATTACHES):
        untraced = _until_untraced(pid, _UNTRACED_WAIT)
        try:
            return attach()
        except Exception as err:  # frida's errors have no common base class
            if (attempt == ATTACHES - 1 or not untraced
                    or not type(err).__module__.startswith(("frida", "_frida"))
                    or type(err).__name__ == "ProcessNotFoundError"
                    or not _until_untraced(pid, _UNTRACED_WAIT)):
                raise
    raise AssertionError("unreachable")


def _until_untraced(pid: int, timeout: float) -> bool:
    """Until nothing traces ``pid`` (True), or ``timeout`` seconds (False)."""
    deadline = time.monotonic() + timeout
    while _tracer(pid) not in ("0", "gone"):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def _tracer(pid: int) -> str:
    """/proc's TracerPid of ``pid`` ("0": none; "gone": no such process)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            return next((line.split()[1] for line in f if line.startswith("TracerPid:")), "0")
    except OSError:
        return "gone"
