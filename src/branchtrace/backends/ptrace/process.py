"""branchtrace's handle on its ptrace tracer process (the other side is :mod:`.tracer`).

:meth:`TracerProcess.fork` forks the tracer; call it before any thread of ours starts
(the stream consumer, for one): only the forking thread lives on in the child, and a
lock another thread held at the fork would stay held there. :meth:`TracerProcess.run`
sends the request and waits for the reply (keeping the module maps the tracer reports
meanwhile in :attr:`TracerProcess.modules`), while the stream consumer drains the store
in a thread of ours. :meth:`TracerProcess.interrupt` is a signal to the tracer (safe
from a signal handler); :meth:`TracerProcess.close` ends it and reaps it.

The program is the tracer's child, not ours: the tracer reaps it and reports its exit
status. If branchtrace dies, the tracer detaches and the program runs on.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Callable

from ...errors import BranchtraceError, TargetError
from ...model import ModuleMap, ProcessInfo
from . import tracer, wire


class TracerProcess:
    def __init__(self, pid: int, commands: int, replies: int) -> None:
        self.pid = pid
        self._commands = commands
        self._replies = replies
        self._answered = False
        self._reaped = False
        #: the target's module maps as the tracer last reported them (while it runs)
        self.modules: list[ModuleMap] = []
        #: every process traced, as the tracer last reported them (several: children)
        self.processes: list[ProcessInfo] = []
        #: told of a trigger's call (the tracer waits until it returns)
        self.on_snapshot: Callable[[wire.Snapshot], None] | None = None

    @classmethod
    def fork(cls, store_path: Path) -> TracerProcess:
        commands_r, commands_w = os.pipe2(os.O_CLOEXEC)
        replies_r, replies_w = os.pipe2(os.O_CLOEXEC)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the tracer: never returns
            os.close(commands_w)
            os.close(replies_r)
            tracer.serve(store_path, commands_r, replies_w, parent)
        os.close(commands_r)
        os.close(replies_w)
        return cls(pid, commands_w, replies_r)

    def run(self, request: wire.Request) -> wire.Reply:
        """Have the tracer trace ``request``; its reply (errors re-raised here)."""
        wire.send(self._commands, request)
        reply = wire.receive(self._replies)
        while isinstance(reply, (wire.Modules, wire.Processes, wire.Snapshot)):
            if isinstance(reply, wire.Modules):
                self.modules = reply.modules
            elif isinstance(reply, wire.Processes):
                self.processes = reply.processes
            else:
                try:
                    if self.on_snapshot is not None:
                        self.on_snapshot(reply)
                finally:
                    wire.send(self._commands, wire.SNAPSHOT_TAKEN)
            reply = wire.receive(self._replies)
        self._answered = True
        if not isinstance(reply, wire.Reply):
            raise TargetError(f"the ptrace tracer process ended unexpectedly ({self._reap()})")
        if reply.error is not None:
            error = reply.error
            if not isinstance(error, BranchtraceError):
                error.add_note(f"in the ptrace tracer process (pid {self.pid}):\n{reply.where}")
            raise error
        return reply

    def ask_snapshot(self) -> bool:
        """Ask the tracer for a snapshot at the next stop of one of the program's threads
        (safe from a signal handler); False when it is not tracing."""
        if self._reaped or self._answered:
            return False
        try:
            os.kill(self.pid, tracer.SNAPSHOT)
        except ProcessLookupError:
            return False
        return True

    def interrupt(self) -> None:
        """Ask the tracer to detach soon, as after a Ctrl-C (safe from a signal handler)."""
        if not self._reaped and not self._answered:
            try:
                os.kill(self.pid, tracer.USER_STOP)
            except ProcessLookupError:
                pass

    def close(self, patience: float = 10.0) -> None:
        """End the tracer (detaching first if it is still tracing) and reap it. If it is
        still detaching after ``patience`` seconds, leave it to finish on its own."""
        if self._reaped:
            return
        if not self._answered:
            try:
                os.kill(self.pid, tracer.DETACH)
            except ProcessLookupError:
                pass
        for fd in (self._commands, self._replies):
            try:
                os.close(fd)
            except OSError:
                pass
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                pid = self.pid
            if pid:
                self._reaped = True
                return
            time.sleep(0.001)

    def _reap(self) -> str:
        """Wait for the tracer to end; how it ended, in words."""
        if self._reaped:
            return "reaped"
        while True:
            try:
                _, status = os.waitpid(self.pid, 0)
                break
            except ChildProcessError:
                self._reaped = True
                return "gone"
            except InterruptedError:
                continue
        self._reaped = True
        if os.WIFSIGNALED(status):
            return f"killed by signal {os.WTERMSIG(status)} ({signal.strsignal(os.WTERMSIG(status))})"
        return f"exit status {os.WEXITSTATUS(status)}"
