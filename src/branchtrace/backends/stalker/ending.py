"""The end of a run on the Frida side: detaching, and how every process ended.

Mixed into :class:`~.host.Host`. :meth:`Ending.finish` runs on the first process's
host: it lets go of the children still running (children.py), and gives each process
its :class:`~branchtrace.model.ProcessInfo` (exit, modules, threads).
"""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, Any

from ...errors import BranchtraceError
from ...model import ExitInfo, ProcessInfo, StackSnapshot
from ...store.blocks import (
    ANON_CODE_NOTE,
    EVENT_ANON_CODE,
    EVENT_GS_LOST,
    read_table,
    table_events,
)

if TYPE_CHECKING:
    from .host import HostResult

#: After a Ctrl-C, how long stop() waits for Frida to unload its agent (see stop()).
_DETACH_WAIT = 0.25
#: Otherwise (the run's end, --duration): a detach takes milliseconds, unless a thread
#: sleeps in a system call it entered under Stalker (a server back in epoll_wait): it
#: lets go only when the call returns, which may be never. Then the run ends anyway.
_END_DETACH_WAIT = 10.0
#: run --gdb, the crashing thread parked: the same wait, longer (the unload usually ends
#: in it; another thread asleep in a system call, a pthread_join of the crashed thread,
#: would keep it waiting for ever: Frida's agent then stays in the program, idle)
_HOLD_DETACH_WAIT = 1.5
#: After a second Ctrl-C, how long finish() waits for the program to die of it.
_FATE_WAIT = 2.0
_POLL = 0.02
_EXIT_EVENT_WAIT = 2.0   # the kernel's exit event comes a moment after the process is gone
# (read by a thread of ours: on a loaded machine it may be late; waited for only when
# nothing else told how the process ended)


def snapshot_of(tid: int, registers: Any, stack: bytes | None, base: Any = None
                ) -> StackSnapshot | None:
    """The agent's registers ([[dwarf number, "0x..."], ...]) and stack copy from
    ``base`` (crash.js, stackOf; rsp when not said) as a :class:`StackSnapshot`; None
    when either is missing or malformed."""
    if not registers or stack is None:
        return None
    try:
        regs = tuple((int(n), int(v, 0)) for n, v in registers)
        start = int(base, 0) if base else next((v for n, v in regs if n == 7), None)
    except (TypeError, ValueError):
        return None
    return None if start is None else StackSnapshot(tid, regs, start, bytes(stack))


class Ending:
    """stop(), finish() and close() of :class:`~.host.Host`."""

    # the host's, for the type checker
    pid: int
    ppid: int
    argv: tuple[str, ...]
    start_ns: int
    end_ns: int
    notes: list[str]
    threads: list[int]
    modules: list[Any]
    gaps: list[Any]
    crash: Any
    parked: Any   # (tid, pc) of a crashing thread parked for run --gdb, or None
    exit_code: int | None
    child_status: int | None
    exits: Any   # linux/exits.ExitWatcher, or None
    untraced_children: int
    follow_children: bool
    parent: Any
    store: Any
    table_path: Any
    check: Any
    _script: Any
    _session: Any
    _interrupted: bool
    _interrupts: int
    _launcher: Any
    _ended: threading.Event
    _agent_errors: list[str]
    detached: bool

    def stop(self) -> None:
        """Stop following every thread and detach; the target goes on at native speed.

        Recording stops at once (the agent's ``stop``), but Frida's script unload and
        detach wait until every thread has passed through Stalker once more, and a
        thread asleep in a system call (``read`` of a terminal, ``epoll_wait``) does so
        only when the call returns, however long that takes. We wait for that at most
        :data:`_END_DETACH_WAIT` seconds (:data:`_DETACH_WAIT` after a Ctrl-C) and leave
        the rest to the agent: it unloads itself when the thread wakes, the program sees
        nothing of it. ``detached`` says whether the detach ended in time."""
        import frida

        script, session = self._script, self._session
        self._script = self._session = None
        if script is not None:
            try:
                reply = script.exports_sync.stop()
                if reply.get("busy"):
                    self.notes.append(
                        "a thread was still waiting for a free chunk when we detached"
                    )
            except (frida.InvalidOperationError, frida.core.RPCException,
                    frida.TransportError):
                pass

        def unload() -> None:
            if script is not None:
                try:
                    script.unload()
                except (frida.InvalidOperationError, frida.TransportError):
                    pass
            if session is not None:
                try:
                    session.detach()
                except (frida.InvalidOperationError, frida.TransportError):
                    pass

        if script is None and session is None:
            return
        if not self._interrupted and self.parent is None and self.parked is None:
            wait = _END_DETACH_WAIT
        else:
            # after a Ctrl-C, or a child still running at the end of the run (it may sit
            # in a system call for ever: a daemon): wait a little
            wait = _DETACH_WAIT if self.parked is None else _HOLD_DETACH_WAIT
        worker = threading.Thread(target=unload, name="branchtrace-unload", daemon=True)
        worker.start()
        worker.join(wait)
        if worker.is_alive():
            self.detached = False
            self.notes.append(
                "a thread of the program was in a system call when we detached: Frida's "
                "agent unloads itself from the program when the call returns"
            )

    def finish(self, ended: bool) -> HostResult:
        """How the run ended, with the block table, once the target is gone or detached."""
        from .host import HostResult

        held = self._let_go_held()
        if not ended and self._launcher is not None and not held:
            # a second Ctrl-C reached the program as well: it dies of it (bt_sigint
            # swallows one Ctrl-C only); report what really happened to it
            self._launcher.ended.wait(_FATE_WAIT if self._interrupts >= 2 or self.parked is not None
                                     else _POLL)
            ended = self._launcher.ended.is_set()
        exit_info = self._held_exit() if held else self._exit_info(ended)
        if not ended:
            self._refresh_modules()
        self.end_children()   # type: ignore[attr-defined]
        hosts = self.all_hosts()   # type: ignore[attr-defined]
        processes = [h.process_info(exit_info if h is self else None) for h in hosts]
        blocks, overflow = read_table(self.table_path)
        events = table_events(self.table_path)
        self.table_path.unlink(missing_ok=True)
        notes: list[str] = []
        for host in hosts:
            notes.extend(n for n in host.notes if n not in notes)
        if events & EVENT_GS_LOST:
            notes.append("a thread of the program set its own gs base (arch_prctl or "
                         "wrgsbase): its records went through a slower path from then on")
        if events & EVENT_ANON_CODE:
            notes.append(ANON_CODE_NOTE)
        if overflow:
            notes.append(f"the block table was full: {overflow} blocks ran unrecorded")
        if self.crash is not None and not self.crash.exact_pc and exit_info.fault_pc:
            notes.append(
                "the fault pc is the start of the last block the crashing thread recorded "
                "(the fault was in Stalker's code for it, at no instruction of the program)"
            )
        untraced = sum(h.untraced_children for h in hosts)
        if untraced:
            notes.append(f"{untraced} child process{'es' if untraced > 1 else ''} ran untraced "
                         f"(--no-follow-children)")
        threads: list[int] = []
        gaps: list[Any] = []
        for host in hosts:
            notes.extend(f"agent error (pid {host.pid}): {e}" for e in host._agent_errors)
            threads.extend(t for t in host.threads if t not in threads)
            gaps.extend(host.gaps)
        for tid in threads:
            try:
                self.store.mark_exited(tid)
            except BranchtraceError:
                pass
        check = self.check.read() if self.check is not None else None
        return HostResult(exit_info, self.modules, threads, gaps, notes, blocks, check,
                          processes)

    def _let_go_held(self) -> bool:
        """run --gdb: Frida has let go of the program, whose crashing thread is parked
        (holding.py): stop it at its crash, no longer the reaper's. True if held; if it
        cannot be, the thread gets its signal now (it dies of it, as it would have)."""
        if self.parked is None or self.crash is None:
            return False
        from ..linux import sys as pt
        from .holding import hold_parked

        tid, page = self.parked
        why = hold_parked(self.pid, tid, page, self.crash.fault_pc, set(self.threads))
        if why is not None:
            self.notes.append(f"run --gdb: the program could not be held at its crash: {why}")
            try:
                pt.tgkill(self.pid, tid, self.crash.signal)
            except OSError:
                pass
            return False
        if self._launcher is not None:
            self._launcher.let_go()
        return True

    def _held_exit(self) -> ExitInfo:
        crash = self.crash
        return ExitInfo("signaled", signal=crash.signal, fault_address=crash.fault_address,
                        fault_pc=crash.fault_pc, tid=crash.tid, stack=crash.stack, held=True)

    def process_info(self, exit_info: ExitInfo | None) -> ProcessInfo:
        """This host's process (``exit_info``: the first process's, known already)."""
        if exit_info is None:
            exit_info = self._child_exit()
        return ProcessInfo(self.pid, self.ppid, self.argv, exit_info, tuple(self.modules),
                           tuple(self.threads), self.start_ns, self.end_ns or time.time_ns())

    def _child_exit(self) -> ExitInfo:
        status = self.child_status
        if status is not None:
            if os.WIFEXITED(status):
                return ExitInfo("exited", code=os.WEXITSTATUS(status))
            return ExitInfo("signaled", signal=os.WTERMSIG(status))
        if not self._ended.is_set():
            return ExitInfo("detached")
        crash = self.crash
        if crash is not None:
            return ExitInfo("signaled", signal=crash.signal, fault_address=crash.fault_address,
                            fault_pc=crash.fault_pc, tid=crash.tid, stack=crash.stack)
        if self.exit_code is not None:
            return ExitInfo("exited", code=self.exit_code)
        return self._watched_exit() or ExitInfo("unknown")

    def _watched_exit(self) -> ExitInfo | None:
        """The process's wait status from the kernel's exit events (linux/exits.py): a
        death by a signal that is no fault (SIGPIPE, SIGTERM, SIGKILL), which no agent
        sees and no waitpid of ours reaps."""
        status = self.exits.status(self.pid, _EXIT_EVENT_WAIT) if self.exits else None
        if status is None:
            return None
        if os.WIFSIGNALED(status):
            return ExitInfo("signaled", signal=os.WTERMSIG(status),
                            core_dumped=os.WCOREDUMP(status))
        return ExitInfo("exited", code=os.WEXITSTATUS(status))

    def _exit_info(self, ended: bool) -> ExitInfo:
        if not ended:
            return ExitInfo("detached")
        crash = self.crash
        if self._launcher is not None:
            info: ExitInfo = self._launcher.join()
            if info.status == "signaled" and crash is not None and crash.signal == info.signal:
                return ExitInfo("signaled", signal=info.signal,
                                fault_address=crash.fault_address, fault_pc=crash.fault_pc,
                                tid=crash.tid, core_dumped=info.core_dumped,
                                stack=crash.stack)
            return info
        if crash is not None:
            return ExitInfo("signaled", signal=crash.signal, fault_address=crash.fault_address,
                            fault_pc=crash.fault_pc, tid=crash.tid, stack=crash.stack)
        if self.exit_code is None:   # attached, and it died of a signal that is no fault
            watched = self._watched_exit()
            if watched is not None:
                return watched
        return ExitInfo("exited", code=self.exit_code)

    def close(self) -> None:
        if self.parent is not None:
            return
        self.table_path.unlink(missing_ok=True)
        if self.check is not None:
            self.check.close()
        if self.exits is not None:
            self.exits.close()

    def _refresh_modules(self) -> None:
        raise NotImplementedError

    def _post(self, message: dict[str, Any]) -> None:
        raise NotImplementedError
