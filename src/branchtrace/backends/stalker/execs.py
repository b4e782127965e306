"""Following a target through ``execve``: catch the new image at its entry point.

An exec replaces the process's memory, and Frida's agent with it: Stalker stops, and
the new image would run natively, unrecorded. So the agent's hook on ``execve``
(agent.js, followExec) tells the host before the system call runs, and waits. The host
seizes the calling thread with ptrace (:class:`ExecCatcher`, PTRACE_O_TRACEEXEC; Frida
holds no ptrace attachment once its agent is in) and lets it go on. If the exec
succeeds, the kernel stops the thread at PTRACE_EVENT_EXEC, in the new image, before
any of its code ran; the catcher then runs it to its ELF entry point (a breakpoint at
``AT_ENTRY``, as the reaper does for a program we start: the dynamic loader has mapped
and initialized the libraries, not a line of the program has run), takes the
breakpoint out, parks the thread there (:mod:`.hold`: ``jmp $``) and detaches it,
spinning in place. The host attaches Frida again, loads the agent, gives the entry
point its code back (the agent's probe armed on it) and lets it go: the agent follows
the thread from there on into the same store slot (``Host._follow_exec``). If the exec
fails, the hook's onLeave says so, and the catcher lets the thread go
(PTRACE_INTERRUPT, PTRACE_DETACH): the trace goes on.

Why Frida's own child gating is not used: it gates every fork and posix_spawn child
too (each held until resumed, with Frida's agent in it), which changes how programs
that start processes behave; and enabled only once our hook sees the exec, it is too
late (Frida decides in its own execve hook, which runs first: no ``child-added``).

Frida handles the exec on its own all the same: after it, something of Frida's
attaches to the new image for a moment (/proc showed the state go R, t, R) and lets it
run. Three precautions keep that from starting the new image before our agent is in,
each measured with two or three loops of the exec fixture at once, under the load of
other test suites:

- the catcher holds the thread in its exec stop (no signal ends it) until Frida
  reports the old session detached (``settled``); without that wait Frida's attach
  raced ours: 1 run in 300 ran the new image unrecorded ("target exited");
- it detached from a group stop (SIGSTOP injected while it still traces the thread),
  which leaves the process stopped with no moment in between; detaching with SIGSTOP,
  as the reaper does, leaves the signal pending for a moment, and Frida attached in
  that moment in 2 runs of 160 and let the program go. A stop was still not a hold
  (1 pipeline in ~60 ran on and hung, :mod:`.hold`): since session 21 the thread is
  parked, not stopped;
- the host detaches the old session only once the new image runs under the new one;
  detaching it first made Frida's next attach fail now and then (3 runs in 160).

With all three: 0 runs in 500 lost the new image; parked, 0 hangs in 300 pipelines.

Every ptrace request must come from the thread that seized: one thread of ours per
exec does them all, and takes its orders through :meth:`cancel`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import threading
import time
from typing import TYPE_CHECKING, Any

from ...errors import BranchtraceError, TargetError, UsageError
from ..linux import sys as pt
from ..linux.program import read_argv
from . import hold
from .launch import continue_if_stopped

if TYPE_CHECKING:
    from ...store import Store
    from .launch import Attaching, Launcher

AT_ENTRY = 9
#: How long the catcher waits for a step of the exec (the program may be slow to get to
#: its entry point: the dynamic loader maps and relocates every library first).
STEP_TIMEOUT = 60.0
_POLL = 0.0005
#: The longest the catcher waits for Frida to let go of the old image's session.
SETTLE_TIMEOUT = 5.0
#: how long an exec waits for the follow of the one before it to let go of its old session
EXEC_BUSY_WAIT = 10.0


class ExecCatcher:
    """Seize ``tid`` (the thread about to call execve) from a thread of our own;
    :meth:`wait` gives the new image's entry point once it is stopped there, or None
    (the exec failed and :meth:`cancel` let the thread go, or the process ended)."""

    def __init__(self, pid: int, tid: int, settled: threading.Event | None = None) -> None:
        self.pid = pid
        self.tid = tid
        #: set once Frida has let go of the old image (its session reported detached)
        self._settled = settled
        self.error: str | None = None
        self.entry: int | None = None
        self.ended = False
        self._seized = threading.Event()
        self._done = threading.Event()
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name="branchtrace-exec",
                                        daemon=True)

    def start(self) -> bool:
        """Seize the thread; False (and :attr:`error`) when that is not possible."""
        self._thread.start()
        self._seized.wait()
        return self.error is None

    def cancel(self) -> None:
        """The exec failed: let the thread go on, untraced by us, and wait until it is."""
        self._cancel.set()
        self._done.wait()

    def wait(self, timeout: float | None = None) -> int | None:
        """The entry point of the new image, parked there (detached); None if
        the exec was cancelled, the process ended or a step failed (:attr:`error`)."""
        self._done.wait(timeout)
        return self.entry

    # -- the catcher thread: every ptrace request ------------------------------------------

    def _run(self) -> None:
        try:
            pt.ptrace(pt.PTRACE_SEIZE, self.tid, 0, pt.PTRACE_O_TRACEEXEC)
        except OSError as err:
            self.error = f"cannot follow the exec: ptrace: {err.strerror}"
            self._seized.set()
            self._done.set()
            return
        self._seized.set()
        try:
            if self._until_exec():
                if self._settled is not None:
                    # held in the exec stop (no signal ends it) until Frida is done
                    # with the old image: see the module's docstring
                    self._settled.wait(SETTLE_TIMEOUT)
                self.entry = self._run_to_entry()
        except (OSError, _Failed) as err:
            self.error = f"cannot follow the exec: {err}"
            self._let_go()
            hold.release(self.pid)
        finally:
            self._done.set()

    def _wait(self, deadline: float, cancellable: bool) -> int | None:
        """The next wait status of the thread; None once cancelled."""
        while True:
            if cancellable and self._cancel.is_set():
                return None
            done, status = os.waitpid(self.tid, os.WNOHANG | pt.WALL)
            if done == self.tid:
                if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                    self.ended = True
                    raise _Failed(f"the process ended (wait status {status:#x})")
                return status
            if time.monotonic() > deadline:
                raise _Failed("the program took too long")
            time.sleep(_POLL)

    def _until_exec(self) -> bool:
        """Pass signals on until the exec stop (True) or a cancel (False: let go)."""
        while True:
            # no deadline: the exec may wait for the tracer (it waits for our answer)
            status = self._wait(float("inf"), cancellable=True)
            if status is None:
                self._let_go()
                return False
            event, sig = status >> 16, os.WSTOPSIG(status)
            if event == pt.PTRACE_EVENT_EXEC:
                return True
            if event == pt.PTRACE_EVENT_STOP:
                self._restart_stop(sig)
                continue
            pt.ptrace(pt.PTRACE_CONT, self.tid, 0, 0 if event else sig)

    def _restart_stop(self, sig: int) -> None:
        if sig in (signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU):
            pt.ptrace(pt.PTRACE_LISTEN, self.tid)   # a group stop: stay stopped
        else:
            pt.ptrace(pt.PTRACE_CONT, self.tid)

    def _let_go(self) -> None:
        """Detach: interrupt the thread (wherever it waits), then PTRACE_DETACH."""
        try:
            pt.ptrace(pt.PTRACE_INTERRUPT, self.tid)
            deadline = time.monotonic() + STEP_TIMEOUT
            while True:
                status = self._wait(deadline, cancellable=False)
                assert status is not None
                event, sig = status >> 16, os.WSTOPSIG(status)
                if event == pt.PTRACE_EVENT_STOP:
                    pt.ptrace(pt.PTRACE_DETACH, self.tid)
                    return
                # a signal on its way in: keep it for the program
                pt.ptrace(pt.PTRACE_DETACH, self.tid, 0, 0 if event else sig)
                return
        except (OSError, _Failed):
            pass   # gone: nothing to let go

    def _run_to_entry(self) -> int:
        entry = _entry_point(self.pid)
        saved = pt.write_byte(self.pid, entry, 0xCC)
        pt.ptrace(pt.PTRACE_CONT, self.pid)
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:
            status = self._wait(deadline, cancellable=False)
            assert status is not None
            sig, event = os.WSTOPSIG(status), status >> 16
            if (sig == signal.SIGTRAP and event == 0
                    and pt.peekuser(self.pid, pt.RIP) == entry + 1):
                break
            if event == pt.PTRACE_EVENT_STOP:
                self._restart_stop(sig)
                continue
            pt.ptrace(pt.PTRACE_CONT, self.pid, 0, 0 if event else sig)
        pt.write_byte(self.pid, entry, saved)
        pt.pokeuser(self.pid, pt.RIP, entry)
        hold.park(self.pid, entry)   # see hold.py: parked, not stopped
        pt.ptrace(pt.PTRACE_DETACH, self.pid)   # it spins there until the host unparks it
        return entry


class _Failed(Exception):
    pass


def _entry_point(pid: int) -> int:
    with open(f"/proc/{pid}/auxv", "rb") as f:
        raw = f.read()
    for key, value in struct.iter_unpack("<QQ", raw[: len(raw) // 16 * 16]):
        if key == AT_ENTRY:
            return int(value)
    raise _Failed("no entry point in the new image's auxiliary vector")


class ExecFollowing:
    """The host's side of an exec (mixed into :class:`~.host.Host`, which owns the
    session, the store and the methods declared at the end here)."""

    pid: int
    argv: tuple[str, ...]
    notes: list[str]
    threads: list[int]
    store: Store
    _lock: threading.Lock
    _ended: threading.Event
    _interrupted: bool
    _launcher: Launcher | None
    _script: Any
    _session: Any
    #: the sessions so far (one per image), the catcher of an exec under way, the thread
    #: that goes on in the same store slot in the new image, and whether Frida has let
    #: go of the old image's session
    _generation: int
    _exec: ExecCatcher | None
    _carried: set[int]
    _old_detached: threading.Event

    def _on_exec(self, tid: int, path: str | None) -> bool:
        """The main thread is about to call execve (it waits for our answer): seize it
        so that the new image is caught at its entry point. True if it is."""
        if self._interrupted:
            return False
        # the follow of an earlier exec ends letting go of the old session; the new
        # image may exec again meanwhile (a shim: bash, then env, then python)
        deadline = time.monotonic() + EXEC_BUSY_WAIT
        while self._exec is not None and time.monotonic() < deadline:
            time.sleep(0.005)
        if self._exec is not None:
            self.notes.append(f"exec of {path}: the previous exec was still being followed "
                              f"after {EXEC_BUSY_WAIT:g} s; the new image runs unrecorded")
            return False
        self._old_detached.clear()
        catcher = ExecCatcher(self.pid, tid, self._old_detached)
        if not catcher.start():
            self.notes.append(f"exec of {path}: {catcher.error}; the new image runs "
                              "unrecorded")
            return False
        self._refresh_modules()   # the old image's, while it is there
        self._exec = catcher
        threading.Thread(target=self._follow_exec, args=(catcher, path),
                         name="branchtrace-exec-follow", daemon=True).start()
        return True

    def _on_exec_failed(self, errno: Any) -> None:
        """The execve returned (it failed): let the thread go on; the trace goes on."""
        catcher = self._exec
        if catcher is not None:
            catcher.cancel()

    def _follow_exec(self, catcher: ExecCatcher, path: str | None) -> None:
        """Once the new image is stopped at its entry point: attach again, load the
        agent, let the main thread follow itself from there into its old slot."""
        entry = catcher.wait()
        try:
            if entry is None:
                if catcher.error is not None and not catcher.ended:
                    self.notes.append(f"exec of {path}: {catcher.error}")
                return
            self._generation += 1
            with self._lock:
                for tid in self.threads:   # the exec ended every other thread
                    if tid != self.pid:
                        with contextlib.suppress(BranchtraceError):
                            self.store.mark_exited(tid)
                self._carried.add(self.pid)
            try:
                exe = os.readlink(f"/proc/{self.pid}/exe")
            except OSError:
                exe = path or "?"
            old = (self._script, self._session)
            self._script = self._session = None
            try:
                self._attach(self.pid)
                self._load_agent(self.pid, str(entry))
            except (TargetError, UsageError) as err:
                self.notes.append(f"exec: {exe}: cannot follow the new image ({err}); it "
                                  "runs unrecorded")
                continue_if_stopped(self.pid)
                return
            self.notes.append(f"exec: {exe} (pid {self.pid}): the trace goes on in the new "
                              "image; branches before it belong to the old one")
            self.argv = read_argv(self.pid) or self.argv
            self._resume(self.pid)
            self._exec = None       # the new image runs: it may exec again
            _forget_session(*old)   # only now: see _forget_session
        finally:
            if self._exec is catcher:
                self._exec = None
            if self._launcher is None and not os.path.exists(f"/proc/{self.pid}"):
                self._ended.set()

    # -- the host's, declared here for the type checker ----------------------------------

    def _attach(self, pid: int, attaching: Attaching | None = None) -> None:
        raise NotImplementedError

    def _load_agent(self, pid: int, entry: str | None) -> dict[str, Any]:
        raise NotImplementedError

    def _resume(self, pid: int) -> None:
        raise NotImplementedError

    def _refresh_modules(self) -> None:
        raise NotImplementedError


def _forget_session(script: Any, session: Any) -> None:
    """Let go of the session of an image an exec replaced (its agent is gone); only
    once the new image runs under the new session, so that nothing of Frida's touches
    the pid while the new image waits at its entry point."""
    for close in (getattr(script, "unload", None), getattr(session, "detach", None)):
        if close is not None:
            with contextlib.suppress(Exception):  # frida's errors have no common base
                close()
