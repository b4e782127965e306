"""The ptrace backend: exact and slow, the reference every other backend is checked against.

It single-steps every thread of the target (about 40k instructions per second on a
2-core KVM guest, measured in docs/benchmarks.md) and records each taken branch as a
from/to pair with its kind. To keep that affordable it runs at full speed to a start
point (``main`` by default) and steps from there.
"""

from __future__ import annotations

import os
import platform
import signal
from typing import TYPE_CHECKING

from ...errors import TargetError
from .. import Backend, Probe, RecordOptions, RunResult, Target
from ..linux.program import find_program, start_vaddr

if TYPE_CHECKING:
    from ...model import ModuleMap, ProcessInfo
    from ...store import Encoding, Store, StoreMode
    from .process import TracerProcess


class PtraceBackend(Backend):
    """Traces from a process of its own (:mod:`.process`, :mod:`.tracer`), so that the
    program survives branchtrace being killed; the records cross in the store."""

    name = "ptrace"
    description = "single-steps the target with ptrace; exact; ~40k instructions/s"

    @property
    def encoding(self) -> Encoding:
        from ...store import Encoding

        return Encoding.FROMTO

    def __init__(self) -> None:
        self._tracer: TracerProcess | None = None
        self._interrupted = False

    def probe(self) -> Probe:
        if platform.machine() != "x86_64":
            return Probe(False, f"only x86-64 is supported, this is {platform.machine()}")
        try:
            import capstone  # noqa: F401
        except ImportError:
            return Probe(False, "the capstone package is not installed")
        try:
            with open("/proc/sys/kernel/yama/ptrace_scope", encoding="ascii") as f:
                if f.read().strip() == "3":
                    return Probe(False, "ptrace is disabled (kernel.yama.ptrace_scope = 3)")
        except OSError:
            pass
        return _probe_seize()

    def store_capacity(self, requested: int, mode: StoreMode) -> int:
        return requested  # the Python producer takes any capacity

    def prepare(self, store: Store) -> None:
        """Fork the tracer process now, before the caller starts any thread."""
        from .process import TracerProcess

        if self._tracer is None:
            self._tracer = TracerProcess.fork(store.path)

    def release(self) -> None:
        """End and reap the tracer process (detaching it first if it still traces)."""
        tracer, self._tracer = self._tracer, None
        if tracer is not None:
            tracer.close()

    def live(self, first_id: int) -> tuple[None, list[ModuleMap]]:
        """While a run goes on: no block table (FROMTO records need none), and the
        module maps known so far, so that a trace file cut short symbolizes."""
        tracer = self._tracer
        return None, list(tracer.modules) if tracer is not None else []

    def live_processes(self) -> list[ProcessInfo]:
        """While a run goes on: every process traced so far, once there are several."""
        tracer = self._tracer
        return list(tracer.processes) if tracer is not None else []

    def snapshot_soon(self) -> bool:
        """SIGUSR2: the tracer stops a thread of the program, copies its registers and
        stack, and sends a snapshot (as at a trigger's call)."""
        tracer = self._tracer
        return tracer is not None and tracer.ask_snapshot()

    def interrupt(self) -> None:
        self._interrupted = True
        if self._tracer is not None:
            self._tracer.interrupt()

    def record(self, target: Target, store: Store, options: RecordOptions) -> RunResult:
        from .wire import Request

        note: str | None = None
        if target.pid is not None:
            if target.pid == os.getpid():  # the tracer process checks for its own pid
                raise TargetError("branchtrace cannot trace itself")
            request = Request(pid=target.pid, duration=options.duration,
                              follow_children=options.follow_children, trigger=options.trigger)
        else:
            path = find_program(target.argv[0])
            vaddr, note = start_vaddr(path, options.start)
            request = Request(target.argv, target.env, target.disable_aslr, path=path,
                              start_vaddr=vaddr, duration=options.duration,
                              follow_children=options.follow_children,
                              hold_on_crash=options.hold_on_crash, ptracer=target.ptracer,
                              trigger=options.trigger)
        self.prepare(store)
        assert self._tracer is not None
        on_snapshot = options.on_snapshot
        if on_snapshot is not None:
            from .. import SnapshotEvent

            self._tracer.on_snapshot = lambda s: on_snapshot(
                SnapshotEvent(s.reason, s.pid, s.tid, s.pc or None, s.stack))
        try:
            if self._interrupted:
                self._tracer.interrupt()
            reply = self._tracer.run(request)
        finally:
            self.release()
            self._interrupted = False
        assert reply.result is not None
        result = reply.result
        if note and len(result.processes) > 1:
            note = f"pid {reply.pid}: {note}"
        notes = ([note] if note else []) + result.notes
        return RunResult(result.exit, result.modules, result.threads, result.gaps, notes,
                         pid=reply.pid, processes=result.processes)


_probe_cache: Probe | None = None


def _probe_seize() -> Probe:
    """Really try: seize a child of ours, then let it go."""
    global _probe_cache
    if _probe_cache is not None:
        return _probe_cache
    from ..linux import sys as pt

    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:  # if we are killed before we kill it, it must not linger
            pt.set_parent_death_signal(signal.SIGKILL)
            if os.getppid() != parent:
                os._exit(0)
            signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
            signal.sigwait([signal.SIGTERM])
        finally:
            os._exit(0)
    try:
        pt.ptrace(pt.PTRACE_SEIZE, pid, 0, 0)  # the child's death ends the tracing
        probe = Probe(True, "ptrace works here (seized a test process)")
    except OSError as exc:
        probe = Probe(False, f"ptrace is not permitted here: {exc.strerror}")
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    _probe_cache = probe
    return probe
