"""The ptrace backend: exact and slow, the reference every other backend is checked against.

It single-steps every thread of the target (about 40k instructions per second on our
VMs, measured in docs/benchmarks.md) and records each taken branch as a from/to pair with its kind. To keep that
affordable it runs at full speed to a start point (``main`` by default) and steps from
there.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
from typing import TYPE_CHECKING

from ...errors import TargetError, UsageError
from .. import Probe, RecordOptions, RunResult, Target

if TYPE_CHECKING:
    from ...store import Store, StoreMode

from ...store import Encoding


def _find_program(program: str) -> str:
    """The path exec would run, or a one-line TargetError."""
    if "/" in program:
        path = program
    else:
        found = shutil.which(program)
        if found is None:
            raise TargetError(f"program not found: {program}")
        path = found
    if os.path.isdir(path):
        raise TargetError(f"cannot run {program}: it is a directory")
    if not os.path.exists(path):
        raise TargetError(f"program not found: {program}")
    if not os.access(path, os.X_OK):
        raise TargetError(f"cannot run {program}: permission denied")
    return path


def _start_vaddr(path: str, start: str | None) -> tuple[int | None, str | None]:
    """The ELF address to start stepping at (None: the first instruction), and a note."""
    from ...symbols import load_elf

    if start == "entry":
        return None, None
    image = load_elf(path)
    if image is None:
        if start is None:
            return None, f"cannot read {path} as ELF; stepping from the first instruction"
        raise TargetError(f"cannot read the symbols of {path}")
    name = start or "main"
    address = image.symbol_address(name)
    if address is None:
        if start is None:
            return None, "no symbol 'main' in the executable; stepping from the first instruction"
        raise UsageError(f"--start: no function {name!r} in {path}")
    return address, None


class PtraceBackend:
    name = "ptrace"
    description = "single-steps the target with ptrace; exact; ~40k instructions/s here"
    encoding = Encoding.FROMTO

    def __init__(self) -> None:
        self._stepper: object | None = None

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

    def interrupt(self) -> None:
        from .stepper import Stepper

        if isinstance(self._stepper, Stepper):
            self._stepper.interrupt(user=True)

    def record(self, target: Target, store: Store, options: RecordOptions) -> RunResult:
        from .stepper import Stepper

        stepper = Stepper(store)
        note: str | None = None
        if target.pid is not None:
            stepper.attach(target.pid)
        else:
            path = _find_program(target.argv[0])
            start_vaddr, note = _start_vaddr(path, options.start)
            stepper.spawn(target.argv, target.env, target.disable_aslr)
            if start_vaddr is not None:
                stepper.set_start(start_vaddr + _bias_of(stepper, path))
            else:
                stepper.set_start(None)
        self._stepper = stepper
        timer_set = _arm_timer(options.duration, stepper)
        try:
            result = stepper.run()
        finally:
            if timer_set:
                signal.setitimer(signal.ITIMER_REAL, 0)
            self._stepper = None
        notes = ([note] if note else []) + result.notes
        return RunResult(result.exit, result.modules, result.threads, result.gaps, notes,
                         pid=stepper.pid)


def _bias_of(stepper: object, path: str) -> int:
    from .stepper import Stepper

    assert isinstance(stepper, Stepper)
    real = os.path.realpath(path)
    for module in stepper.modules:
        if os.path.realpath(module.path) == real:
            return module.bias
    raise TargetError(f"cannot find {path} in the memory map of pid {stepper.pid}")


def _arm_timer(duration: float | None, stepper: object) -> bool:
    """Detach after ``duration`` seconds (only from the main thread, where signals go)."""
    from .stepper import Stepper

    if not duration or not isinstance(stepper, Stepper):
        return False
    import threading

    if threading.current_thread() is not threading.main_thread():
        raise UsageError("--duration needs the tracer to run in the main thread")
    signal.signal(signal.SIGALRM, lambda *_: stepper.interrupt())
    signal.setitimer(signal.ITIMER_REAL, duration)
    return True


_probe_cache: Probe | None = None


def _probe_seize() -> Probe:
    """Really try: seize a child of ours, then let it go."""
    global _probe_cache
    if _probe_cache is not None:
        return _probe_cache
    from . import sys as pt

    pid = os.fork()
    if pid == 0:
        try:
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
