"""The ptrace tracer process: the side of the fork that single-steps the target.

branchtrace forks this process (see :mod:`.process`) before it starts any thread. It
reads one :class:`~.wire.Request`, traces the target with a :class:`~.stepper.Stepper`
that writes records straight into the shared-memory store, and writes one
:class:`~.wire.Reply`. It ends with ``os._exit``: nothing of the parent's (atexit
handlers, buffered output, the store's owner) runs here.

Why a process of its own: when a tracer is killed, the kernel detaches its tracees but
leaves the trap flag of a single-stepping thread set, and the program dies of SIGTRAP.
Nothing can catch SIGKILL, so the tracer must outlive branchtrace: it asks the kernel
for :data:`DETACH` when branchtrace dies (``PR_SET_PDEATHSIG``), and on that signal
it detaches every thread cleanly (PTRACE_DETACH clears the trap flag; the stepper
swallows a single-step trap still pending), then exits. The program runs on.

Signals it takes (each asks the stepper to detach soon):
:data:`DETACH` (SIGUSR1: branchtrace died, or gave up), :data:`USER_STOP` (SIGUSR2:
branchtrace's ``interrupt()``, a Ctrl-C), SIGINT (the terminal's Ctrl-C reaches the
whole process group: swallowed in the program too), SIGALRM (``--duration``), SIGTERM
and SIGHUP.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from types import FrameType
from typing import Callable, NoReturn

from ...errors import TargetError
from ...model import ModuleMap, ProcessInfo
from ...store import Store
from ..linux import sys as pt
from . import wire
from .stepper import Stepper

DETACH = signal.SIGUSR1
USER_STOP = signal.SIGUSR2
#: branchtrace asks for a snapshot (its SIGUSR2): a real-time signal, which nothing else
#: sends us (SIGWINCH would come with every resize of the terminal)
SNAPSHOT = signal.SIGRTMIN + 1
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGALRM, DETACH, USER_STOP)


class _Control:
    """What the signal handlers share with the tracing code."""

    stepper: Stepper | None = None
    stop = False
    user = False
    abandoned = False   # DETACH came: branchtrace died (or gave up, and removes it too)


_control = _Control()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    user = signum in (signal.SIGINT, USER_STOP)
    _control.stop = True
    _control.user = _control.user or user
    _control.abandoned = _control.abandoned or signum == DETACH
    if _control.stepper is not None:
        _control.stepper.interrupt(user=user)


def _on_snapshot_signal(signum: int, frame: FrameType | None) -> None:
    if _control.stepper is not None:
        _control.stepper.request_snapshot()


def serve(store_path: Path, commands: int, replies: int, parent: int) -> NoReturn:
    """The whole life of the tracer process (in the child of the fork)."""
    code = 0
    try:
        for sig in _SIGNALS:
            signal.signal(sig, _on_signal)
        signal.signal(SNAPSHOT, _on_snapshot_signal)
        pt.set_parent_death_signal(DETACH)
        if os.getppid() != parent:  # branchtrace died before the line above
            os._exit(0)
        request = wire.receive(commands)
        if isinstance(request, wire.Request):
            reply = _answer(store_path, request, lambda m: _tell(replies, wire.Modules(m)),
                            lambda p: _tell(replies, wire.Processes(p)),
                            lambda s: _snapshot(replies, commands, s))
            if _control.abandoned or os.getppid() != parent:
                _remove_orphan_store(store_path)
            try:
                wire.send(replies, reply)
            except OSError:  # nobody is listening any more
                pass
        else:  # the pipe closed before a request: branchtrace died, or has no use for us
            _remove_orphan_store(store_path)
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def _tell(fd: int, message: object) -> None:
    """Send a message while the run goes on; if branchtrace is gone, trace on."""
    try:
        wire.send(fd, message)
    except OSError:
        pass


def _snapshot(replies: int, commands: int, message: wire.Snapshot) -> None:
    """A trigger's call: tell branchtrace, and wait until it has copied the store (or
    is gone)."""
    try:
        wire.send(replies, message)
        wire.receive(commands)
    except OSError:
        pass


def _answer(store_path: Path, request: wire.Request,
            on_modules: Callable[[list[ModuleMap]], None],
            on_processes: Callable[[list[ProcessInfo]], None],
            on_snapshot: Callable[[wire.Snapshot], None]) -> wire.Reply:
    stepper: Stepper | None = None
    try:
        with Store.open(store_path) as store:
            stepper = Stepper(store, request.follow_children, request.hold_on_crash)
            stepper.on_modules = on_modules
            stepper.on_processes = on_processes
            stepper.on_asked = lambda tid, pc, stack: on_snapshot(wire.Snapshot(
                "SIGUSR2", stepper.pid if stepper else 0, tid, pc, stack))
            trigger = request.trigger
            if trigger is not None:
                stepper.trigger = trigger
                stepper.on_trigger = lambda tid, pc, stack, n: on_snapshot(wire.Snapshot(
                    f"trigger {trigger.symbol}, call {n}", stepper.pid if stepper else 0,
                    tid, pc, stack))
            _control.stepper = stepper
            if _control.stop:
                stepper.interrupt(user=_control.user)
            if request.pid is not None:
                stepper.attach(request.pid)
                if not stepper.arm_trigger():
                    stepper.interrupt()     # no such function: let the program go
            else:
                stepper.spawn(request.argv, request.env, request.disable_aslr, request.ptracer)
                start = request.start_vaddr
                stepper.set_start(None if start is None else start + _bias_of(stepper, request.path))
            if request.duration:
                signal.setitimer(signal.ITIMER_REAL, request.duration)
            result = stepper.run()
            signal.setitimer(signal.ITIMER_REAL, 0)
            if stepper.trigger_error is not None:
                raise stepper.trigger_error
            return wire.Reply(result, stepper.pid)
    except BaseException as exc:
        return wire.error_reply(exc, stepper.pid if stepper is not None else 0)


def _bias_of(stepper: Stepper, path: str) -> int:
    real = os.path.realpath(path)
    for module in stepper.modules:
        if os.path.realpath(module.path) == real:
            return module.bias
    raise TargetError(f"cannot find {path} in the memory map of pid {stepper.pid}")


def _remove_orphan_store(path: Path) -> None:
    """branchtrace died: remove its store file (and the private directory made for it).
    Harmless if branchtrace lives on: it only reads a store it has mapped."""
    try:
        path.unlink(missing_ok=True)
        if path.parent.name.startswith("branchtrace-"):
            path.parent.rmdir()
    except OSError:
        pass
