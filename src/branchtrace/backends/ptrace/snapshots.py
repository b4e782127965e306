"""Snapshots while the stepper traces (``run --trigger``, branchtrace's SIGUSR2): the
trigger's function found in the first process's modules, its calls counted, and the
thread that reached it (or, for SIGUSR2, the first of the program's threads to stop)
held stopped while branchtrace copies the store, with its registers and stack copied as
at a fatal signal. A part of :class:`~.stepper.Stepper`."""

from __future__ import annotations

import os
import signal
import threading
from typing import TYPE_CHECKING, Callable

from ...model import ModuleMap, StackSnapshot
from ..linux import sys as pt
from .family import Thread
from .procs import Proc
from .signals import stack_of

if TYPE_CHECKING:
    from .. import Trigger


class Snapshotting:
    """The snapshot part of the stepper: :meth:`init_snapshots` in its constructor."""

    # the stepper's, for the type checker
    pid: int
    threads: dict[int, Thread]
    procs: dict[int, Proc]
    _stop_requested: bool
    _owner: int

    if TYPE_CHECKING:   # the stepper's (family.py): never shadow them at run time
        @property
        def modules(self) -> list[ModuleMap]: ...

        def _snapshot_maps(self, proc: Proc, fresh: bool = False) -> None: ...

    def init_snapshots(self) -> None:
        #: run --trigger: the function, its address once the first process has its
        #: libraries (None: not armed, or done), the calls so far, and who is told of one
        #: (tid, pc, stack, call number; the thread stays stopped until it returns)
        self.trigger: Trigger | None = None
        self.trigger_at: int | None = None
        self.trigger_calls = 0
        self.on_trigger: Callable[[int, int, StackSnapshot | None, int], None] | None = None
        self.trigger_error: BaseException | None = None
        self._trigger_pending = False   # trigger_at is the entry point, to look again at
        #: SIGUSR2 of branchtrace: told at the next stop of a thread of the first process
        #: (tid, pc, stack), which stays stopped until it returns
        self.on_asked: Callable[[int, int, StackSnapshot | None], None] | None = None
        self._snapshot_asked = False

    def request_snapshot(self) -> None:
        """A snapshot at the next stop of a thread of the first process (its threads are
        interrupted: one asleep in a system call stops too, and goes back to it). Safe
        to call from a signal handler."""
        if self.on_asked is None:
            return
        self._snapshot_asked = True
        if threading.get_ident() != self._owner:
            return
        for t in list(self.threads.values()):
            if t.running and t.proc.pid == self.pid:
                try:
                    pt.ptrace(pt.PTRACE_INTERRUPT, t.tid)
                except OSError:
                    pass

    def _asked_snapshot(self, t: Thread) -> None:
        """The snapshot SIGUSR2 asked for, at this stop of ``t``."""
        self._snapshot_asked = False
        stack = stack_of(t.tid, t.proc.mem.read, t.proc.stack_span(t.tid))
        pc = stack.register(16) if stack is not None else None
        if self.on_asked is not None:
            self.on_asked(t.tid, pc or 0, stack)

    def _image_replaced(self, proc: Proc) -> None:
        """An exec: the trigger's function was the first image's, the new one has it
        elsewhere if at all. No more trigger (README: the program as it starts)."""
        if proc.pid == self.pid:
            self.trigger_at = None
            self._trigger_pending = False

    def arm_trigger(self, at_exec: bool = False) -> bool:
        """Find the trigger's function in the first process's modules (the executable
        first, then the libraries loaded so far). When none has it, the error is kept in
        :attr:`trigger_error` and we stop: False (the caller ends the program it started,
        or lets go of one it attached to). ``at_exec``: stepping from the first
        instruction, before the dynamic loader has mapped the libraries: a function not
        in the executable is looked up again at the executable's entry point."""
        if self.trigger is None:
            return True
        from ..linux.program import function_address

        self._snapshot_maps(self.procs[self.pid])
        try:
            self.trigger_at = function_address(self.modules, self.trigger.symbol, self.pid)
        except BaseException as err:
            entry = _entry_point(self.pid) if at_exec else None
            if entry is not None:
                self.trigger_at, self._trigger_pending = entry, True
                return True
            self.trigger_error = err
            self.trigger = None
            return False
        return True

    def _triggered(self, t: Thread, pc: int) -> None:
        """A branch reached the trigger's function: a snapshot if it is the call asked
        for, the thread stopped (with its registers and stack) until it is taken."""
        trigger = self.trigger
        if trigger is None or t.proc.pid != self.pid or self._stop_requested:
            return
        if self._trigger_pending:    # the entry point: the libraries are mapped now
            self._trigger_pending = False
            self.trigger_at = None
            if not self.arm_trigger():
                os.kill(self.pid, signal.SIGKILL)
            return
        self.trigger_calls += 1
        n = self.trigger_calls
        if trigger.fires(n) and self.on_trigger is not None:
            stack = stack_of(t.tid, t.proc.mem.read, t.proc.stack_span(t.tid))
            self.on_trigger(t.tid, pc, stack, n)
        if trigger.done(n):
            self.trigger_at = None


def _entry_point(pid: int) -> int | None:
    """The executable's entry point in process ``pid`` (AT_ENTRY of its auxiliary vector)."""
    import struct

    try:
        with open(f"/proc/{pid}/auxv", "rb") as f:
            data = f.read()
    except OSError:
        return None
    for key, value in struct.iter_unpack("<QQ", data[:len(data) - len(data) % 16]):
        if key == 9:     # AT_ENTRY
            return int(value)
    return None
