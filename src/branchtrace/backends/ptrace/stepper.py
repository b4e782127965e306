"""The single-stepping engine: every thread of the target, one instruction at a time.

A thread is resumed with PTRACE_SINGLESTEP; at each stop we read its pc. When the pc is
not the fall-through of the instruction it just ran, that instruction was a taken branch
(its kind comes from decoding it), or a signal moved the thread (kind ``interrupt``).
All ptrace requests are made from the thread that created the :class:`Stepper`.

Every process the target starts (fork, vfork, clone without ``CLONE_THREAD``,
posix_spawn) is followed, with its threads and execs (:mod:`.family`, :mod:`.procs`),
unless ``follow_children`` is off: then each is let go at its first stop and runs
untraced, and a note counts them.
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from ...errors import StoreError
from ...isa import NOT_A_BRANCH
from ...model import BranchKind, ExitInfo, Gap, ModuleMap, ProcessInfo
from . import launch
from .. import HOLD_SIGNALS
from ..linux import sys as pt
from .family import FREE, STEPPING, Family, Thread
from .procs import Proc, cmdline
from .snapshots import Snapshotting
from .signals import (FAULT_SIGNALS, GROUP_STOP_SIGNALS, SI_KERNEL, STEP_TRAP, Fault, bit,
                      caught_signals, pending_signals, stack_of)

if TYPE_CHECKING:
    from ...store import Store

OPTIONS = (pt.PTRACE_O_TRACECLONE | pt.PTRACE_O_TRACEEXEC | pt.PTRACE_O_TRACEEXIT
           | pt.PTRACE_O_TRACESYSGOOD | pt.PTRACE_O_TRACEFORK | pt.PTRACE_O_TRACEVFORK)
_NEW_CHILD = (pt.PTRACE_EVENT_FORK, pt.PTRACE_EVENT_VFORK, pt.PTRACE_EVENT_CLONE)


@dataclass
class StepResult:
    exit: ExitInfo
    modules: list[ModuleMap]
    threads: list[int]
    gaps: list[Gap]
    notes: list[str] = field(default_factory=list)
    processes: list[ProcessInfo] = field(default_factory=list)   # the first first


class Stepper(Snapshotting, Family):
    """Drives one traced process. Create it, then call :meth:`spawn` or :meth:`attach`,
    then :meth:`run`."""

    def __init__(self, store: Store, follow_children: bool = True,
                 hold_on_crash: bool = False) -> None:
        self.store = store
        self.hold_on_crash = hold_on_crash
        self.pid = 0
        self.threads: dict[int, Thread] = {}
        self.order: list[int] = []
        self.procs: dict[int, Proc] = {}      # every process seen, the first first
        self.follow_children = follow_children
        #: told of the first process's module maps each time they change
        self.on_modules: Callable[[list[ModuleMap]], None] | None = None
        #: told of every process each time one appears, execs or ends
        self.on_processes: Callable[[list[ProcessInfo]], None] | None = None
        self.gaps: list[Gap] = []
        self.notes: list[str] = []
        self._untraced: set[int] = set()      # children let go (follow_children off)
        self._stop_requested = False
        self._user_interrupt = False
        self._owner = threading.get_ident()
        self.init_snapshots()

    # ---- setup -------------------------------------------------------------------

    def spawn(self, argv: tuple[str, ...], env: dict[str, str] | None,
              disable_aslr: bool = False, ptracer: int | None = None) -> int:
        """Start ``argv`` traced, stopped at its exec. Raises TargetError."""
        self.pid = launch.spawn_traced(argv, env, OPTIONS, disable_aslr, ptracer)
        proc = self.procs[self.pid] = Proc(self.pid, 0, tuple(argv))
        self._add_thread(self.pid, FREE, proc)
        proc.open()
        self._snapshot_maps(proc)
        return self.pid

    def attach(self, pid: int) -> None:
        """Seize every thread of a running process and interrupt each. Raises TargetError."""
        self.pid = pid
        proc = self.procs[pid] = Proc(pid, 0, cmdline(pid), started=True)
        for tid in launch.seize_all(pid, OPTIONS):
            self._add_thread(tid, STEPPING, proc).running = True
        proc.open()
        self._snapshot_maps(proc)

    def set_start(self, address: int | None) -> None:
        """Run at full speed to ``address`` (a breakpoint), or step from here if None."""
        proc = self.procs[self.pid]
        if address is None:
            proc.started = True
            self.threads[self.pid].mode = STEPPING
            if not self.arm_trigger(at_exec=True):
                os.kill(self.pid, signal.SIGKILL)   # no such function: end what we started
            return
        original = pt.write_byte(self.pid, address, 0xCC)
        proc.breakpoint = (address, original)

    # ---- interruption ----------------------------------------------------------------

    def interrupt(self, user: bool = False) -> None:
        """Detach as soon as possible. ``user``: a Ctrl-C, whose SIGINT the target also
        got from the terminal and must not die of. Safe to call from a signal handler."""
        self._stop_requested = True
        self._user_interrupt = self._user_interrupt or user
        if threading.get_ident() != self._owner:
            return
        for t in list(self.threads.values()):
            if t.running:
                try:
                    pt.ptrace(pt.PTRACE_INTERRUPT, t.tid)
                except OSError:
                    pass

    # ---- the loop ----------------------------------------------------------------------

    def run(self) -> StepResult:
        """Step until the process ends or we detached."""
        for waiting in self.threads.values():
            if not waiting.running:
                self._resume(waiting)
        if self._stop_requested:  # asked before we ran: now there is something to interrupt
            self.interrupt()
        threads = self.threads
        record = self._record
        peek = pt.peekuser
        step = pt.ptrace
        SINGLESTEP, RIP = pt.PTRACE_SINGLESTEP, pt.RIP
        try:
            while threads:
                try:
                    tid, status = os.waitpid(-1, pt.WALL)
                except ChildProcessError:
                    break
                t = threads.get(tid)
                try:
                    if t is not None:
                        t.running = False
                    # the hot path: a single-step trap of a stepping thread
                    if status == STEP_TRAP and t is not None and t.mode == STEPPING \
                            and not self._stop_requested and t.signal_from is None \
                            and not self._snapshot_asked:
                        pc = peek(tid, RIP)
                        prev = t.insn
                        if prev is not None and pc != prev.address + prev.size:
                            if prev.kind >= 0:
                                if prev.kind == BranchKind.OTHER and prev.text == "int3" \
                                        and self._is_program_int3(t, pc):
                                    continue
                                record(t, prev.address, pc, prev.kind)
                            elif pc != prev.address:
                                record(t, prev.address, pc, BranchKind.OTHER)
                            if pc == self.trigger_at:
                                self._triggered(t, pc)
                        t.insn = t.proc.insns.get(pc)
                        step(SINGLESTEP, tid)
                        t.running = True
                        continue
                    self._slow_path(tid, t, status)
                except ProcessLookupError:
                    # the thread was killed under us (exit_group from another thread,
                    # SIGKILL): waitpid reports its end next
                    if t is not None:
                        t.running = True
        finally:
            for proc in self.procs.values():
                proc.mem.close()
        for tid in list(self.threads):
            self._drop(tid)
        first = self.procs[self.pid]
        if first.breakpoint is not None or first.detached_before_start:
            self.notes.append(f"pid {self.pid}: the start point was never reached, so "
                              "nothing was recorded; --start entry records from the first "
                              "instruction")
        if len(self.procs) == 1:    # one process: no need to say which one a note is of
            prefix = f"pid {self.pid}: "
            self.notes = [n[len(prefix):] if n.startswith(prefix) else n for n in self.notes]
        if self._untraced:
            n = len(self._untraced)
            self.notes.append(f"{n} child process{'es' if n > 1 else ''} ran untraced "
                              f"(--no-follow-children)")
        for proc in self.procs.values():
            proc.ended()
        exit_info = first.exit or ExitInfo("detached")
        return StepResult(exit_info, self.modules, list(self.order), self.gaps, self.notes,
                          [p.info() for p in self.procs.values()])

    def _record(self, t: Thread, from_ip: int, to_ip: int, kind: int) -> None:
        buf = t.buf
        if buf is None:
            t.lost += 1
            return
        try:
            buf.push(from_ip, to_ip, kind)
        except StoreError:  # stream mode, gave up waiting for a free chunk: we are detaching
            t.lost += 1

    def _is_program_int3(self, t: Thread, pc: int) -> bool:
        """An int3 the program ran itself: give it its SIGTRAP, as it would get untraced."""
        info = pt.getsiginfo(t.tid)
        if info.si_code != SI_KERNEL:
            return False
        t.insn = t.proc.insns.get(pc)
        self._resume(t, signal.SIGTRAP)
        return True

    def _slow_path(self, tid: int, t: Thread | None, status: int) -> None:
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            self._thread_gone(tid, status)
            return
        if not os.WIFSTOPPED(status):
            return
        if t is None:  # a new thread or process reported before its parent's event
            t = self._new_task(tid)
            if t is None:   # a child we do not follow: let go
                return
        sig = os.WSTOPSIG(status)
        event = status >> 16
        if event in _NEW_CHILD:
            self._new_task(pt.geteventmsg(tid), t, event)
            self._continue(t)
        elif event == pt.PTRACE_EVENT_EXEC:
            self._exec(t)
        elif event == pt.PTRACE_EVENT_EXIT:
            self._snapshot_maps(t.proc)
            self._continue(t, keep_stepping=False)
        elif event == pt.PTRACE_EVENT_STOP:
            if sig in GROUP_STOP_SIGNALS and not self._stop_requested:
                pt.ptrace(pt.PTRACE_LISTEN, tid)  # stay stopped, as job control asks
                t.running = True  # as far as interrupt() goes: it must reach this one too
                return
            self._continue(t)  # an interrupt stop, or the first stop of a new thread
        elif sig == signal.SIGTRAP and event == 0:
            self._trap(t)
        else:
            self._signal(t, sig)

    def _trap(self, t: Thread) -> None:
        pc = pt.peekuser(t.tid, pt.RIP)
        bp = t.proc.breakpoint
        insns = t.proc.insns
        if t.mode == FREE and bp is not None and pc - 1 == bp[0]:
            self._start_at_breakpoint(t, bp)
            return
        if t.mode == STEPPING and t.signal_from is not None:
            # the first instruction of a signal handler
            self._record(t, t.signal_from, pc, BranchKind.INTERRUPT)
            t.signal_from = None
            t.insn = insns.get(pc)
        elif t.mode == STEPPING and t.insn is not None and pc != t.insn.fallthrough:
            kind = t.insn.kind if t.insn.kind != NOT_A_BRANCH else BranchKind.OTHER
            if t.insn.kind != NOT_A_BRANCH or pc != t.insn.address:
                self._record(t, t.insn.address, pc, kind)
            t.insn = insns.get(pc)
        elif t.mode == STEPPING:
            t.insn = insns.get(pc)
        self._continue(t)

    def _start_at_breakpoint(self, t: Thread, bp: tuple[int, int]) -> None:
        address, original = bp
        proc = t.proc
        pt.write_byte(t.tid, address, original)
        pt.pokeuser(t.tid, pt.RIP, address)
        proc.breakpoint = None
        proc.started = True
        proc.insns.invalidate()
        self._snapshot_maps(proc)  # the libraries the program needs are loaded by now
        if proc.pid == self.pid and not self.arm_trigger():
            # no such function: the program we started is ended before its main runs
            os.kill(proc.pid, signal.SIGKILL)
        t.mode = STEPPING
        t.insn = proc.insns.get(address)
        for other in self.threads.values():  # threads started before the start point
            if other is not t and other.proc is proc and other.mode == FREE:
                other.mode = STEPPING
                other.insn = None
                if other.running:
                    try:
                        pt.ptrace(pt.PTRACE_INTERRUPT, other.tid)
                    except OSError:
                        pass
        self._continue(t)

    def _signal(self, t: Thread, sig: int) -> None:
        """A signal is about to be delivered to the thread: pass it on, as a debugger does."""
        if self._stop_requested and bit(sig) & self._swallow_mask():
            self._continue(t, inject=0)  # our own step trap, or the Ctrl-C meant for us
            return
        pc = pt.peekuser(t.tid, pt.RIP)
        fatal = not caught_signals(t.tid) & bit(sig)
        hold = (self.hold_on_crash and fatal and sig in HOLD_SIGNALS and t.proc.pid == self.pid
                and not self._stop_requested)
        if sig in FAULT_SIGNALS or sig == signal.SIGABRT or hold:
            address: int | None = None
            if sig in FAULT_SIGNALS:
                try:
                    info = pt.getsiginfo(t.tid)
                    if info.si_code > 0:   # sent by kill/tgkill (<= 0): no si_addr
                        address = info.si_addr
                except OSError:
                    pass
            # the stack, for the report's call stack, when the signal is fatal (a handler
            # that catches it, a JIT's or a GC's, takes many: copying 256 KiB each is waste)
            stack = stack_of(t.tid, t.proc.mem.read, t.proc.stack_span(t.tid)) if fatal else None
            t.proc.faults[sig] = Fault(sig, address, pc, t.tid, stack)
            if hold:
                self._hold(t, t.proc.faults[sig])
                return
        if t.mode == STEPPING and caught_signals(t.tid) & bit(sig):
            t.signal_from = pc
        self._continue(t, inject=sig)

    def _hold(self, t: Thread, fault: Fault) -> None:
        """run --gdb: the program is about to take a crash signal. Detach the thread with
        SIGSTOP in the signal's place (the whole process enters group-stop, its state
        intact, the crash signal not delivered), then every other thread: the kernel keeps
        each detached thread in the group-stop. A fault comes again when the program
        resumes at the faulting instruction; a signal sent by kill or raise is sent again
        by whoever resumes it (cli/gdb.py)."""
        proc = t.proc
        proc.exit = ExitInfo("signaled", signal=fault.signal, fault_address=fault.address,
                             fault_pc=fault.pc, tid=t.tid, stack=fault.stack, held=True)
        self.interrupt()            # the others stop, and are detached as they report
        self._remove_breakpoint(t)
        try:
            pt.ptrace(pt.PTRACE_DETACH, t.tid, 0, signal.SIGSTOP)
        except OSError:
            pass
        self._drop(t.tid)

    def _swallow_mask(self) -> int:
        """Signals to take from the program before we detach: SIGTRAP (a single-step
        trap still in flight) and, after a Ctrl-C, SIGINT."""
        mask = bit(signal.SIGTRAP)
        if self._user_interrupt:
            mask |= bit(signal.SIGINT)
        return mask

    def _continue(self, t: Thread, inject: int = 0, keep_stepping: bool = True) -> None:
        """Resume a stopped thread, or detach it when we are stopping."""
        if self._snapshot_asked and not self._stop_requested and t.proc.pid == self.pid:
            self._asked_snapshot(t)
        if self._stop_requested:
            if inject == 0 and pending_signals(t.tid) & self._swallow_mask():
                # a single-step trap or the terminal's Ctrl-C is still pending: let it
                # arrive while we trace, and swallow it, or it would kill the program
                self._resume(t, 0, step=False)
                return
            self._remove_breakpoint(t)
            try:
                pt.ptrace(pt.PTRACE_DETACH, t.tid, 0, inject)
            except OSError:
                pass
            self._drop(t.tid)
            return
        self._resume(t, inject, step=keep_stepping and t.mode == STEPPING)

    def _remove_breakpoint(self, t: Thread) -> None:
        """Before the first detach: put back the byte our start-point int3 replaced, or
        the program would die of SIGTRAP when it got there untraced."""
        proc = t.proc
        if proc.breakpoint is None:
            return
        address, original = proc.breakpoint
        try:
            pt.write_byte(t.tid, address, original)
        except OSError:
            return
        proc.breakpoint = None
        proc.detached_before_start = True
        proc.insns.invalidate()

    def _resume(self, t: Thread, inject: int = 0, step: bool | None = None) -> None:
        if step is None:
            step = t.mode == STEPPING
        try:
            pt.ptrace(pt.PTRACE_SINGLESTEP if step else pt.PTRACE_CONT, t.tid, 0, inject)
            t.running = True
        except OSError as exc:
            if exc.errno != 3:  # ESRCH: it died under us; waitpid will tell
                raise

    # ---- helpers -------------------------------------------------------------------------

