"""Following the processes a target starts: fork, vfork, posix_spawn (and exec in them).

The agent's hooks on ``fork``, ``vfork``, ``posix_spawn`` and ``posix_spawnp`` (agent.js,
followChildren) tell the host before the system call runs, and wait. The host seizes
the calling thread with ptrace (:class:`ForkCatcher`, PTRACE_O_TRACEFORK|TRACEVFORK; Frida
holds no ptrace attachment once its agent is in) and answers; the kernel then stops the
parent at PTRACE_EVENT_FORK/VFORK and starts the child attached to us, stopped before it
ran an instruction. The catcher lets the parent go at once, then:

- a *fork* child (a copy of the parent, Frida's agent and our hooks with it, none of
  their threads): the catcher writes the original bytes of every code page the old
  agent patched back (read from the files mapped there, through /proc/PID/mem), so that
  the copy's hooks can never run in the child; parks the child at fork's return
  address (:mod:`.hold`) and detaches it; the host attaches Frida, loads the agent,
  and the child's thread follows itself from fork's return address (a one-shot probe, as at an entry point) into a new
  store slot. What glibc's fork runs in the child before it returns (atfork handlers)
  is not recorded.
- a *vfork* child (vfork, posix_spawn, system: it shares the parent's memory until it
  execs): followed from its exec (PTRACE_O_TRACEEXEC; then as :mod:`.execs` does: run
  to the new image's entry point, park, detach, attach, load). The few branches
  between vfork and exec are not recorded; a vfork child that exits without exec (a
  failed exec) is not recorded at all, its exit status is.

Each child gets a :class:`~.host.Host` of its own (sharing the store, the block table and
the device), which follows its own execs and its own children. Every ptrace request of
one fork comes from the catcher's thread.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any, Callable

from ..linux import sys as pt
from ..linux.program import read_argv
from . import hold
from .execs import STEP_TIMEOUT, _entry_point, _Failed

PTRACE_O_TRACEFORK = 0x02
PTRACE_O_TRACEVFORK = 0x04
PTRACE_EVENT_FORK = 1
PTRACE_EVENT_VFORK = 2
_POLL = 0.0005
_MAX_PATCHED_PAGES = 64

#: (child pid, "fork" or "vfork", entry or None, error or None, wait status of a child
#: that ended before it could be followed): called from the catcher
Ready = Callable[[int, str, "int | None", "str | None", "int | None"], None]


class ForkCatcher:
    """Seize ``tid`` (a thread about to fork) and deliver its child, stopped and
    detached, to ``ready``: a fork child at once, a vfork child at its exec's entry."""

    def __init__(self, tid: int, ready: Ready, ret: int | None = None) -> None:
        self.tid = tid
        self.ret = ret   # fork's return address (a fork child is followed from there)
        self.ready = ready
        self.error: str | None = None
        self.child = 0
        self.kind = ""
        self.exit_status: int | None = None   # a vfork child that ended without exec
        self._seized = threading.Event()
        self._parent_done = threading.Event()
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name="branchtrace-fork",
                                        daemon=True)

    def start(self) -> bool:
        self._thread.start()
        self._seized.wait()
        return self.error is None

    def join(self) -> None:
        self._thread.join(STEP_TIMEOUT)

    def done(self) -> None:
        """fork returned in the parent: let it go if no child came (a failed fork)."""
        self._cancel.set()
        self._parent_done.wait(STEP_TIMEOUT)

    # -- the catcher thread --------------------------------------------------------------

    def _run(self) -> None:
        try:
            pt.ptrace(pt.PTRACE_SEIZE, self.tid, 0, PTRACE_O_TRACEFORK | PTRACE_O_TRACEVFORK)
        except OSError as err:
            self.error = f"ptrace: {err.strerror}"
            self._seized.set()
            self._parent_done.set()
            return
        self._seized.set()
        try:
            if not self._until_fork():
                return
        except (OSError, _Failed) as err:
            self.error = str(err)
            self._parent_done.set()
            return
        finally:
            self._parent_done.set()
        try:
            if self.kind == "fork":
                self._hold_fork_child()
                self.ready(self.child, "fork", None, None, None)
            else:
                entry = self._vfork_child_to_exec()
                self.ready(self.child, "vfork", entry, None, None)
        except (OSError, _Failed) as err:
            _let_go(self.child)
            hold.release(self.child)
            self.ready(self.child, self.kind, None, str(err), self.exit_status)

    def _wait(self, tid: int, deadline: float, cancellable: bool = False) -> int | None:
        while True:
            if cancellable and self._cancel.is_set():
                return None
            done, status = os.waitpid(tid, os.WNOHANG | pt.WALL)
            if done == tid:
                if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                    self.exit_status = status
                    raise _Failed(f"the process ended (wait status {status:#x})")
                return status
            if time.monotonic() > deadline:
                raise _Failed("the program took too long")
            time.sleep(_POLL)

    def _until_fork(self) -> bool:
        """Pass the parent's signals on until its fork event (True: the parent is let
        go, :attr:`child` known) or fork returned without one (False: let go)."""
        while True:
            status = self._wait(self.tid, float("inf"), cancellable=True)
            if status is None:
                _let_go(self.tid)
                return False
            event, sig = status >> 16, os.WSTOPSIG(status)
            if event in (PTRACE_EVENT_FORK, PTRACE_EVENT_VFORK):
                self.child = pt.geteventmsg(self.tid)
                self.kind = "fork" if event == PTRACE_EVENT_FORK else "vfork"
                pt.ptrace(pt.PTRACE_DETACH, self.tid)
                return True
            if event == pt.PTRACE_EVENT_STOP:
                _restart_stop(self.tid, sig)
                continue
            pt.ptrace(pt.PTRACE_CONT, self.tid, 0, 0 if event else sig)

    def _first_stop(self, deadline: float) -> None:
        while True:
            status = self._wait(self.child, deadline)
            assert status is not None
            if status >> 16 == pt.PTRACE_EVENT_STOP:
                return
            if os.WSTOPSIG(status) == signal.SIGSTOP and status >> 16 == 0:
                return   # attached the old way: a SIGSTOP
            pt.ptrace(pt.PTRACE_CONT, self.child, 0, 0)

    def _hold_fork_child(self) -> None:
        """Run the fork child natively to fork's return address (out of glibc's fork and
        the old agent's hook on it: Frida's injector hung on a child stopped at its
        birth, in the kernel's return from fork), then leave it there, stopped."""
        deadline = time.monotonic() + STEP_TIMEOUT
        self._first_stop(deadline)
        restore_code(self.child)
        if self.ret is None:
            raise _Failed("fork's return address is not known")
        self._run_to(self.ret, deadline)
        self._park_and_detach(self.ret)

    def _vfork_child_to_exec(self) -> int:
        deadline = time.monotonic() + STEP_TIMEOUT
        self._first_stop(deadline)
        pt.ptrace(pt.PTRACE_SETOPTIONS, self.child, 0, pt.PTRACE_O_TRACEEXEC)
        pt.ptrace(pt.PTRACE_CONT, self.child, 0, 0)
        while True:
            status = self._wait(self.child, deadline)
            assert status is not None
            event, sig = status >> 16, os.WSTOPSIG(status)
            if event == pt.PTRACE_EVENT_EXEC:
                break
            if event == pt.PTRACE_EVENT_STOP:
                _restart_stop(self.child, sig)
                continue
            pt.ptrace(pt.PTRACE_CONT, self.child, 0, 0 if event else sig)
        entry = _entry_point(self.child)
        self._run_to(entry, deadline)
        self._park_and_detach(entry)
        return entry

    def _run_to(self, address: int, deadline: float) -> None:
        """A breakpoint at ``address``; run the child there, take it out."""
        saved = pt.write_byte(self.child, address, 0xCC)
        pt.ptrace(pt.PTRACE_CONT, self.child)
        while True:
            status = self._wait(self.child, deadline)
            assert status is not None
            sig, event = os.WSTOPSIG(status), status >> 16
            if (sig == signal.SIGTRAP and event == 0
                    and pt.peekuser(self.child, pt.RIP) == address + 1):
                break
            if event == pt.PTRACE_EVENT_STOP:
                _restart_stop(self.child, sig)
                continue
            pt.ptrace(pt.PTRACE_CONT, self.child, 0, 0 if event else sig)
        pt.write_byte(self.child, address, saved)
        pt.pokeuser(self.child, pt.RIP, address)

    def _park_and_detach(self, address: int) -> None:
        hold.park(self.child, address)   # see hold.py: parked, not stopped
        pt.ptrace(pt.PTRACE_DETACH, self.child)   # it spins there until the host unparks it


def _restart_stop(tid: int, sig: int) -> None:
    if sig in (signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU):
        pt.ptrace(pt.PTRACE_LISTEN, tid)
    else:
        pt.ptrace(pt.PTRACE_CONT, tid)


def _let_go(tid: int) -> None:
    """Detach from ``tid`` wherever it is (it runs on, untraced)."""
    try:
        pt.ptrace(pt.PTRACE_INTERRUPT, tid)
        deadline = time.monotonic() + STEP_TIMEOUT
        while time.monotonic() < deadline:
            done, status = os.waitpid(tid, os.WNOHANG | pt.WALL)
            if done == tid:
                if os.WIFSTOPPED(status):
                    event, sig = status >> 16, os.WSTOPSIG(status)
                    pt.ptrace(pt.PTRACE_DETACH, tid, 0,
                              0 if event or sig == signal.SIGTRAP else sig)
                return
            time.sleep(_POLL)
    except OSError:
        pass


def restore_code(pid: int) -> int:
    """Write the file's bytes back over every executable file mapping of ``pid`` where
    they differ (the hooks of the agent the fork copied: Interceptor's jumps); the
    number of bytes written. Frida's own files (memfd) are left alone."""
    written = 0
    with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    with open(f"/proc/{pid}/mem", "r+b", buffering=0) as mem:
        for line in lines:
            parts = line.split(maxsplit=5)
            if len(parts) < 6 or "x" not in parts[1] or not parts[5].startswith("/"):
                continue
            start, end = (int(x, 16) for x in parts[0].split("-"))
            offset = int(parts[2], 16)
            try:
                with open(parts[5], "rb") as image:
                    image.seek(offset)
                    original = image.read(end - start)
            except OSError:
                continue
            mem.seek(start)
            try:
                current = mem.read(len(original))
            except OSError:
                continue
            written += _patch_back(mem, start, current, original)
    return written


def _patch_back(mem: Any, start: int, current: bytes, original: bytes) -> int:
    """Write ``original`` over ``current`` page by page where they differ; not at all
    when more than :data:`_MAX_PATCHED_PAGES` differ (not the file that is mapped there:
    replaced on disk since; hooks touch a few pages)."""
    if current == original:
        return 0
    pages = [i for i in range(0, min(len(current), len(original)), 4096)
             if current[i:i + 4096] != original[i:i + 4096]]
    if len(pages) > _MAX_PATCHED_PAGES:
        return 0
    for i in pages:
        mem.seek(start + i)
        mem.write(original[i:i + 4096])
    return sum(len(original[i:i + 4096]) for i in pages)


class ChildFollowing:
    """The host's side of the children (mixed into :class:`~.host.Host`): one child
    :class:`~.host.Host` per process the target starts, which records into the same store
    and follows its own execs and children."""

    pid: int
    notes: list[str]
    threads: list[int]
    modules: list[Any]
    store: Any
    only: tuple[str, ...]
    _lock: threading.Lock
    _ended: threading.Event
    _interrupted: bool
    follow_children: bool
    children: list[Any]
    untraced_children: int
    _catchers: dict[int, ForkCatcher]
    _all_catchers: list[ForkCatcher]
    _closing: bool
    ppid: int
    argv: tuple[str, ...]
    start_ns: int
    end_ns: int

    def _on_fork(self, tid: int, ret: str | None) -> bool:
        """``tid`` is about to fork (it waits for our answer): seize it."""
        if self._interrupted or self._closing:
            return False
        entry = int(ret, 0) if ret else None
        catcher = ForkCatcher(
            tid, lambda pid, kind, at, err, status: self._child_ready(pid, kind, at or entry,
                                                                  err, status), entry)
        if not catcher.start():
            self.notes.append(f"a child of pid {self.pid} (thread {tid}) is not followed: "
                              f"{catcher.error}")
            return False
        old = self._catchers.get(tid)
        self._catchers[tid] = catcher
        self._all_catchers.append(catcher)
        if old is not None:
            old.done()
        return True

    def _on_fork_done(self, tid: int) -> None:
        catcher = self._catchers.pop(tid, None)
        if catcher is not None:
            catcher.done()

    def _child_ready(self, pid: int, kind: str, entry: int | None,
                     error: str | None, status: int | None) -> None:
        """On the catcher's thread: the child is stopped (detached) where it is to be
        followed from; give it a host of its own."""
        child: Any = type(self)(self.store, self.only, parent=self)  # type: ignore[call-arg]
        child.pid, child.ppid = pid, self.pid
        child.argv = read_argv(pid) or self.argv
        with self._lock:
            self.children.append(child)
        if error is not None or entry is None:
            child.notes.append(f"pid {pid} ({kind} child of {self.pid}) not followed: "
                               f"{error or 'no place to start'}")
            self.notes.append(child.notes[-1])
            child.child_status = status
            child._ended.set()
            child.end_ns = time.time_ns()
            return
        try:
            child.start_child(pid, entry)
        except Exception as err:  # frida's errors have no common base class
            self.notes.append(f"pid {pid} ({kind} child of {self.pid}): cannot follow it "
                              f"({err}); it runs unrecorded")
            from .launch import continue_if_stopped

            continue_if_stopped(pid)
            child._ended.set()

    def end_children(self) -> None:
        """At the end of the run: let go of every catcher and of every child still
        running (it goes on untraced), depth first. A child is stopped before its own
        children are looked at (it asks for no more forks once stopped), and a catcher
        under way is waited for (it may be giving a child its host)."""
        self._closing = True
        while True:
            catchers = list(self._all_catchers)
            for catcher in list(self._catchers.values()):
                catcher.done()  # a fork that made no child (yet): let go of the thread
            self._catchers.clear()
            for catcher in catchers:
                catcher.join()
            for child in list(self.children):
                child._closing = True
                if not child._ended.is_set():
                    child.stop()
                child.end_children()
                child.end_ns = child.end_ns or time.time_ns()
            if len(self._all_catchers) == len(catchers):
                return

    def all_hosts(self) -> list[Any]:
        """This host, then its children's, in the order they started, depth first."""
        hosts: list[Any] = [self]
        for child in list(self.children):
            hosts.extend(child.all_hosts())
        return hosts

