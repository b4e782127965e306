"""The processes and threads a :class:`~.stepper.Stepper` traces: how each appears (a
new thread, or a child process: fork, vfork, clone without ``CLONE_THREAD``,
posix_spawn), executes a new image, and ends. The stepper drives them one instruction
at a time; this is its bookkeeping, a base class of it.

A new task can be reported by its parent's event (PTRACE_EVENT_FORK, VFORK, CLONE) or
by its own first stop, in either order: whichever comes first makes it known. A thread
joins its process (by its Tgid); a child process gets its own :class:`~.procs.Proc`,
or, when children are not followed, is detached at its first stop and counted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ...errors import MemoryLimitError, TargetError
from ...isa import Insn
from ...model import ExitInfo, Gap, ModuleMap, ProcessInfo
from ..linux import sys as pt
from ..linux.program import status_field
from .procs import Proc, cmdline

if TYPE_CHECKING:
    from ...store import Store, ThreadBuffer

# Thread modes
FREE = 0       # running at full speed (before the start point)
STEPPING = 1


@dataclass(eq=False)
class Thread:
    tid: int
    mode: int
    buf: ThreadBuffer | None
    proc: Proc
    insn: Insn | None = None          # the instruction the thread is about to run
    lost: int = 0                     # branches we could not store (no buffer)
    signal_from: int | None = None    # pc where a caught signal was delivered
    running: bool = False             # resumed and not yet reported by waitpid


class Family:
    """The processes and threads of a run (a base class of the stepper)."""

    store: Store
    pid: int                              # the first process
    threads: dict[int, Thread]            # the threads being traced
    order: list[int]                      # every thread seen, in order of appearance
    procs: dict[int, Proc]                # every process seen, the first first
    follow_children: bool
    on_modules: Callable[[list[ModuleMap]], None] | None
    on_processes: Callable[[list[ProcessInfo]], None] | None
    gaps: list[Gap]
    notes: list[str]
    _untraced: set[int]
    _stop_requested: bool

    def _continue(self, t: Thread, inject: int = 0, keep_stepping: bool = True) -> None:
        raise NotImplementedError

    @property
    def modules(self) -> list[ModuleMap]:
        """The first process's module maps."""
        first = self.procs.get(self.pid)
        return first.modules if first is not None else []

    def _new_task(self, tid: int, parent: Thread | None = None,
                  event: int = 0) -> Thread | None:
        """A thread or process we have not seen, from its parent's ``event`` (fork,
        vfork, clone) or from its own first stop when that comes first (no parent): its
        thread, or None for a child process we do not follow (let go at its first
        stop)."""
        if tid in self.threads:
            return self.threads[tid]
        if tid in self._untraced:
            self._let_go(tid, parent is None)
            return None
        if event in (pt.PTRACE_EVENT_FORK, pt.PTRACE_EVENT_VFORK):
            proc = None                     # a new process, whatever /proc says
        else:                               # clone: a thread, or a process (no CLONE_THREAD)
            tgid = status_field(tid, "Tgid")
            if tgid is None and parent is not None:
                proc = parent.proc          # /proc did not answer: most clones are threads
            else:
                proc = self.procs.get(tgid or tid)
        if proc is None:
            if not self.follow_children:
                self._untraced.add(tid)
                self._let_go(tid, parent is None)
                return None
            ppid = parent.proc.pid if parent is not None else (status_field(tid, "PPid") or 0)
            up = self.procs.get(ppid)
            proc = self.procs[tid] = Proc(
                tid, ppid, up.argv if up is not None else cmdline(tid),
                modules=list(up.modules) if up is not None else [],
                breakpoint=up.breakpoint if up is not None else None,
                started=up.started if up is not None else True)
            try:
                proc.open()
            except TargetError as exc:   # its code cannot be decoded: kinds are 'other'
                self.notes.append(f"pid {tid}: {exc}")
            if not proc.modules:
                self._snapshot_maps(proc)
            self._tell_processes()
        return self._add_thread(tid, STEPPING if proc.started else FREE, proc)

    def _let_go(self, tid: int, stopped: bool) -> None:
        """Detach a child we do not follow, at its first stop (it runs untraced)."""
        if stopped:
            try:
                pt.ptrace(pt.PTRACE_DETACH, tid, 0, 0)
            except OSError:
                pass

    def _exec(self, t: Thread) -> None:
        """The process of ``t`` executed a new image (``t`` is now its leader)."""
        proc = t.proc
        former = pt.geteventmsg(t.tid)      # the tid that called execve
        if former != t.tid and former in self.threads:
            self._drop(former)              # it became the leader, without an exit
        proc.breakpoint = None
        proc.argv = cmdline(proc.pid) or proc.argv
        what = proc.argv[0] if proc.argv else "a new image"
        self.notes.append(f"pid {proc.pid}: executed {what} (exec); "
                          "branches before it belong to the old image")
        proc.open()
        self._snapshot_maps(proc, fresh=proc.pid != self.pid)
        self._image_replaced(proc)
        self._tell_processes()
        t.insn = None
        self._continue(t)

    def _image_replaced(self, proc: Proc) -> None:
        """Told of an exec of ``proc`` (snapshots.py: a trigger's address was the old
        image's). Default: nothing."""

    def _thread_gone(self, tid: int, status: int) -> None:
        proc = self.procs.get(tid)
        if proc is not None:
            if os.WIFEXITED(status):
                proc.exit = ExitInfo("exited", code=os.WEXITSTATUS(status))
            else:
                sig = os.WTERMSIG(status)
                fault = proc.faults.get(sig)
                proc.exit = ExitInfo(
                    "signaled", signal=sig,
                    fault_address=fault.address if fault else None,
                    fault_pc=fault.pc if fault else None,
                    tid=fault.tid if fault else None,
                    core_dumped=os.WCOREDUMP(status),
                    stack=fault.stack if fault else None,
                )
            proc.ended()
            self._drop(tid)
            self._tell_processes()
            return
        self._drop(tid)

    def _drop(self, tid: int) -> None:
        t = self.threads.pop(tid, None)
        if t is None:
            return
        t.proc.live.discard(tid)
        if t.buf is not None:
            self.store.mark_exited(tid)
        if t.lost:
            self.gaps.append(Gap(tid, 0, t.lost, "no buffer for this thread (memory limit)"))

    def _add_thread(self, tid: int, mode: int, proc: Proc) -> Thread:
        buf: ThreadBuffer | None
        try:
            buf = self.store.add_thread(tid, should_abort=lambda: self._stop_requested)
        except MemoryLimitError as exc:
            buf = None
            self.notes.append(f"thread {tid} is not recorded: {exc}")
        t = Thread(tid, mode, buf, proc)
        self.threads[tid] = t
        if tid not in self.order:
            self.order.append(tid)
        if tid not in proc.order:
            proc.order.append(tid)
        proc.live.add(tid)
        return t

    def _snapshot_maps(self, proc: Proc, fresh: bool = False) -> None:
        if proc.snapshot_maps(fresh):
            if proc.pid == self.pid and self.on_modules is not None:
                self.on_modules(proc.modules)
            elif proc.pid != self.pid:
                self._tell_processes()

    def _tell_processes(self) -> None:
        if self.on_processes is not None and len(self.procs) > 1:
            self.on_processes([p.live_info() for p in self.procs.values()])
