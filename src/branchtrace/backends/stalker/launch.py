"""Starting a program for Frida: run it to its entry point, then leave it stopped.

Frida's own spawn (``device.spawn``) crashes the target on the kernels we run on (the
child dies of SIGSEGV or SIGTRAP once resumed, even with no script loaded), while
attaching to a running or stopped process works. So the program is started by the
reaper (:mod:`.reaper`, a small separate process that stays its parent): traced, with
a breakpoint on its ELF entry point (``AT_ENTRY``, where the dynamic loader hands over
to ``_start``: shared libraries are mapped and initialized, not a line of the program
has run), which is taken out again before the reaper detaches with SIGSTOP. Frida then
attaches to the stopped process and holds it until ``device.resume``.

:class:`Launcher` is our side of the reaper: it reads when the program is ready and
how it ended, and tells the reaper when Frida holds the program (the attach itself is
:func:`.fridaattach.attach`), and :func:`check_attachable` says in one line why a
running pid cannot be attached.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import TargetError
from .agent_code import LoadedAgent
from .fridaattach import attach

if TYPE_CHECKING:
    from ...model import ExitInfo

_REAPER = Path(__file__).with_name("reaper.py")


class Launcher:
    """Start ``argv`` stopped at its entry point (:meth:`start`), let it go (:meth:`go`),
    and learn how it ended (:attr:`ended`, :meth:`join`)."""

    def __init__(self, argv: tuple[str, ...], env: dict[str, str] | None = None,
                 disable_aslr: bool = False, ptracer: int | None = None) -> None:
        self.argv = argv
        self.ptracer = ptracer
        self.env = env
        self.disable_aslr = disable_aslr
        self.pid = 0
        self.entry = 0
        self.exit: ExitInfo | None = None
        self.ended = threading.Event()
        self._reaper: subprocess.Popen[bytes] | None = None
        self._status: int = -1
        self._control: int = -1
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Start the program; its pid once it is stopped at its entry point."""
        self.spawn()
        return self.ready()

    def spawn(self) -> None:
        """Start the reaper, which starts the program; :meth:`ready` waits for it (the
        reaper is a Python process of its own: ~20 ms, which the caller can use)."""
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        control_r, control_w = os.pipe2(os.O_CLOEXEC)
        try:
            self._reaper = subprocess.Popen(
                [sys.executable, "-S", "-I", str(_REAPER), str(status_w), str(control_r),
                 "0" if self.disable_aslr else "1", str(self.ptracer or 0), "--", *self.argv],
                pass_fds=(status_w, control_r), env=self.env, stdin=None,
            )
        except OSError as err:
            for fd in (status_r, status_w, control_r, control_w):
                os.close(fd)
            raise TargetError(f"cannot start the launcher for {self.argv[0]}: {err}") from None
        os.close(status_w)
        os.close(control_r)
        self._status, self._control = status_r, control_w

    def ready(self) -> int:
        """The program's pid, once it is stopped at its entry point."""
        assert self._reaper is not None, "spawn() first"
        line = self._readline()
        if not line.startswith("ready "):
            self._close_control()
            self._reaper.wait()
            reason = line[len("error "):] if line.startswith("error ") else "the launcher died"
            raise TargetError(f"cannot run {self.argv[0]}: {reason}")
        _, pid, entry = line.split()
        self.pid, self.entry = int(pid), int(entry)
        self._thread = threading.Thread(target=self._wait_end, name="branchtrace-reaper",
                                        daemon=True)
        self._thread.start()
        return self.pid

    def go(self) -> None:
        """Frida holds the program now: the reaper must no longer kill it if we vanish."""
        try:
            os.write(self._control, b"go\n")
        except OSError:
            pass
        self._close_control()

    def abandon(self) -> bool:
        """We will not resume the program: kill it, and tell the reaper so.

        The kill is ours, and at once: once Frida has attached, the program is held by
        Frida's ptrace, not by the reaper's stop, and Frida lets it go when its session
        detaches or when our process exits, which can come before the reaper reads that
        the control pipe closed (the program then ran a few milliseconds of its own: a
        ``touch`` got done in 4 of 30 runs). The pid is still the reaper's unreaped child
        here: the reaper waits for it only after the control pipe closes. True if it
        was killed (:meth:`cancel` then waits for it)."""
        killed = False
        if self.pid and self._control >= 0:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)
                killed = True
        self._close_control()
        return killed

    def cancel(self, attaching: Attaching | None = None) -> None:
        """Never to be resumed: kill it (:meth:`abandon`), let Frida's attach go, and
        wait for the dead program as its tracer (:func:`release_killed`)."""
        killed = self.abandon()
        if attaching is not None:
            attaching.discard()
        if killed:
            release_killed(self.pid)

    def join(self, timeout: float | None = None) -> ExitInfo:
        from ...model import ExitInfo

        self.ended.wait(timeout)
        return self.exit or ExitInfo("exited")

    def let_go(self) -> None:
        """run --gdb: the program, held stopped, is no longer the reaper's: end the
        reaper (it has nothing to undo), so that the program's new parent, the nearest
        subreaper (branchtrace), learns how it ends."""
        if self._reaper is not None:
            with contextlib.suppress(OSError):
                self._reaper.kill()

    def _close_control(self) -> None:
        if self._control >= 0:
            os.close(self._control)
            self._control = -1

    def _readline(self) -> str:
        data = b""
        while not data.endswith(b"\n"):
            try:
                chunk = os.read(self._status, 256)
            except InterruptedError:
                continue
            if not chunk:
                break
            data += chunk
        return data.decode("utf-8", "replace").strip()

    def _wait_end(self) -> None:
        from ...model import ExitInfo

        line = self._readline()
        parts = line.split()
        if parts[:1] == ["exit"] and len(parts) == 2 and parts[1] != "-1":
            self.exit = ExitInfo("exited", code=int(parts[1]))
        elif parts[:1] == ["signal"] and len(parts) == 3:
            self.exit = ExitInfo("signaled", signal=int(parts[1]), core_dumped=parts[2] == "1")
        os.close(self._status)
        if self._reaper is not None:
            self._reaper.wait()
        self.ended.set()


def mapped_paths(pid: int) -> set[str] | None:
    """The files of ``pid``'s modules now (None: its maps cannot be read): the paths
    with an executable mapping, the names :func:`~branchtrace.symbols.maps.modules_from_maps`
    gives its modules. Read here without the symbols package (it imports numpy and the
    ELF reader, ~0.1 s), since :class:`Attaching` calls this before the attach starts."""
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except OSError:
        return None
    paths = set()
    for line in text.splitlines():
        fields = line.split(None, 5)   # start-end perms offset dev inode [path]
        if len(fields) == 6 and "x" in fields[1]:
            paths.add(fields[5])
    return paths


class Attaching:
    """Frida's attach to ``pid``, on a thread of its own: ``device.attach`` waits about
    0.1 s while Frida's agent loads in the target, without holding the GIL, so the
    caller can go on meanwhile (``branchtrace run`` imports numpy and the store then).
    :meth:`result` gives the device and the session, or raises what the attach raised.
    With ``load_agent`` the same thread then creates and loads the agent script
    (:class:`agent_code.LoadedAgent`, :attr:`agent`), as slow and as free of the GIL."""

    def __init__(self, pid: int, load_agent: bool = False) -> None:
        import frida

        self.pid = pid
        self._load_agent = load_agent
        #: the agent script, loaded after the attach (None: not asked for, or it failed:
        #: the host then loads it itself and meets the error there)
        self.agent: LoadedAgent | None = None
        #: the program's modules before Frida's agent is injected (host.Host.ours)
        self.before = mapped_paths(pid)
        self.device: Any = frida.get_local_device()
        #: the attach was tried again (:func:`attach`)
        self.retried = False
        self._session: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._attach, name="branchtrace-attach",
                                        daemon=True)
        self._thread.start()

    def _attach(self) -> None:
        try:
            self.device, self._session = attach(self.device, self.pid,
                                                on_retry=self._on_retry)
        except BaseException as err:  # noqa: BLE001 - handed to result()
            self._error = err
            return
        if self._load_agent:
            try:
                self.agent = LoadedAgent(self._session)
            except Exception:  # noqa: BLE001 - frida's errors have no common base class
                self.agent = None

    def _on_retry(self) -> None:
        self.retried = True

    def result(self) -> tuple[Any, Any]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        session, self._session = self._session, None  # the caller's from now on
        return self.device, session

    def discard(self) -> None:
        """Not used after all: detach, if the attach worked."""
        self._thread.join()
        if self._session is not None:
            with contextlib.suppress(Exception):  # frida's errors have no common base
                self._session.detach()
            self._session = None


def release_killed(pid: int, timeout: float = 1.0) -> None:
    """A program killed while Frida's ptrace held it stays a zombie, traced by a thread
    of our process, until that tracer waits for it; Frida does not, so its parent (the
    reaper) could not reap it while we live (a ``record()`` in a long-lived process left
    a reaper and a zombie behind). Wait for it here, as its tracer (``__WALL``): the
    kernel then hands it back to the reaper, which reaps it and reports how it ended."""
    from ..linux.permissions import tracer_of
    from ..linux.sys import WALL

    deadline = time.monotonic() + timeout
    ours = {int(tid) for tid in os.listdir("/proc/self/task")}
    while tracer_of(pid) in ours:   # 0 once it is gone or no longer traced by us
        try:
            done, _ = os.waitpid(pid, os.WNOHANG | WALL)
        except ChildProcessError:
            return
        if done == pid or time.monotonic() > deadline:
            return
        time.sleep(0.002)




def continue_if_stopped(pid: int) -> None:
    """device.resume ends Frida's hold; if the reaper's group stop is still on, end it too.
    A process still parked (hold.py) gets its code back first."""
    from . import hold

    hold.release(pid)
    for _ in range(50):
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            return
        if state == "T":
            os.kill(pid, signal.SIGCONT)
            return
        if state != "t":
            return
        time.sleep(0.002)


def check_attachable(pid: int) -> None:
    """The reasons Frida would give badly, in one line each."""
    from ..linux.permissions import (
        denied_reason,
        has_cap_sys_ptrace,
        other_owner,
        tracer_of,
        untraceable,
    )

    if pid == os.getpid():
        raise TargetError("branchtrace cannot trace itself")
    if not os.path.exists(f"/proc/{pid}/status"):
        raise TargetError(f"no process with pid {pid}")
    tracer = tracer_of(pid)
    deadline = time.monotonic() + 2.0
    while tracer and os.path.exists(f"/proc/self/task/{tracer}"):
        # one of our own threads: Frida still cleaning up after an earlier session
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
        tracer = tracer_of(pid)
    if tracer and not os.path.exists(f"/proc/self/task/{tracer}"):
        raise TargetError(f"cannot trace pid {pid}: it is already traced by pid {tracer}")
    never = untraceable(pid)
    if never:
        raise TargetError(f"cannot trace pid {pid}: {never}")
    owner = other_owner(pid)
    if owner is not None and not has_cap_sys_ptrace():
        raise TargetError(f"cannot trace pid {pid}: {denied_reason(pid)}")
    if owner is not None:
        raise TargetError(f"cannot trace pid {pid} with the stalker backend: it runs as "
                          f"another user (uid {owner}) and could not map our private "
                          "buffers; use --backend ptrace")
