"""Backends make a target's branches land in the store.

Every backend implements :class:`Backend`. This module is the one place that chooses a
backend, and it says why (``branchtrace doctor`` prints the same reasons).
Optional dependencies are imported inside each backend, never here.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Protocol, Sequence

from ..errors import BackendUnavailable, UsageError

if TYPE_CHECKING:
    import numpy as np

    from ..model import ExitInfo, Gap, ModuleMap, ProcessInfo, StackSnapshot
    from ..store import Encoding, Store, StoreMode

#: Environment variable that overrides ``--backend auto``.
ENV_BACKEND = "BRANCHTRACE_BACKEND"


@dataclass(frozen=True)
class Target:
    """What to trace: a program to spawn (``argv``) or a running process (``pid``)."""

    argv: tuple[str, ...] = ()
    pid: int | None = None
    env: dict[str, str] | None = None
    disable_aslr: bool = False   # spawn with address-space randomization off, as GDB does
    #: spawn: a pid that, with its descendants, may ptrace the program too (Yama's scope 1
    #: lets only ancestors: ``run --gdb`` starts gdb, which is none)
    ptracer: int | None = None

    def describe(self) -> str:
        """``pid N`` for a process to attach to, else the command line."""
        return f"pid {self.pid}" if self.pid is not None else " ".join(self.argv)


@dataclass(frozen=True)
class Trigger:
    """Snapshots on the calls of a function (``run --trigger``): the ``nth`` call
    (1: the first), or with ``every`` each call from the ``nth`` on, ``limit`` at most."""

    symbol: str
    nth: int = 1
    every: bool = False
    limit: int = 1

    def fires(self, count: int) -> bool:
        """Whether the ``count``-th call (1: the first) makes a snapshot."""
        if self.every:
            return self.nth <= count < self.nth + self.limit
        return count == self.nth

    def done(self, count: int) -> bool:
        """Whether no call after the ``count``-th makes one any more."""
        return count >= self.nth + (self.limit - 1 if self.every else 0)


@dataclass(frozen=True)
class SnapshotEvent:
    """A backend's moment for a snapshot (a trigger's call): the thread that made it,
    waiting until the callback returns, with its registers and stack when copied."""

    reason: str
    pid: int
    tid: int | None = None
    pc: int | None = None
    stack: StackSnapshot | None = None


@dataclass(frozen=True)
class RecordOptions:
    start: str | None = None      # symbol to start at; "entry"; None = backend default
    duration: float | None = None  # stop (detach) after this many seconds
    only: tuple[str, ...] = ()     # stalker: report only branches from or into these modules
    follow_children: bool = True   # trace every process the target starts (and exec in them)
    trigger: Trigger | None = None  # snapshots on calls of a function (the first process's)
    #: called by the backend (from any thread of ours) at a trigger's call, while the
    #: program's thread waits: the snapshot copies the store before it returns
    on_snapshot: Callable[[SnapshotEvent], None] | None = None
    #: ``run --gdb``: at a crash signal (:data:`HOLD_SIGNALS`) of the first process with no
    #: handler, stop recording and leave the program stopped before the signal is
    #: delivered (group-stop, no tracer), with ``ExitInfo.held`` set
    hold_on_crash: bool = False
    #: stalker: code the program rewrites after it ran (a JIT's) runs as rewritten: no
    #: block is trusted, every jump goes through Stalker's check (docs/stalker.md, "Code
    #: that changes"); slower
    smc_check: bool = False


#: The signals ``hold_on_crash`` stops at: those whose default action dumps core.
HOLD_SIGNALS = frozenset({3, 4, 5, 6, 7, 8, 11, 24, 25, 31})  # QUIT ILL TRAP ABRT BUS FPE SEGV XCPU XFSZ SYS


@dataclass
class RunResult:
    """What a backend learned about the run, besides the records in the store."""

    exit: ExitInfo
    modules: list[ModuleMap] = field(default_factory=list)
    threads: list[int] = field(default_factory=list)   # in order of appearance
    gaps: list[Gap] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)     # things the user should know
    pid: int = 0
    #: for the BLOCKID encoding: the block table, indexed by block id (see decode/)
    blocks: np.ndarray | None = None
    #: every process traced, the first (``pid``) first, each with its own threads,
    #: modules and exit. Empty: one process, described by the fields above. ``threads``
    #: above lists the threads of all of them (what the store holds); ``exit`` and
    #: ``modules`` above are the first process's.
    processes: list[ProcessInfo] = field(default_factory=list)


@dataclass(frozen=True)
class Probe:
    available: bool
    reason: str


class Backend(Protocol):
    """Everything a backend may do. The first five every backend implements; the rest
    have defaults here (doing nothing), which a backend inherits by subclassing this
    class and overrides when it has something to do at that point of a run. Callers
    call every method directly: no capability is probed for."""

    name: str
    description: str

    @property
    def encoding(self) -> Encoding:
        """The record encoding this backend writes into the store (a property: the store
        module imports numpy, which choosing a backend does not need)."""
        ...

    def probe(self) -> Probe:
        """Can this backend run here? Never raises."""
        ...

    def store_capacity(self, requested: int, mode: StoreMode) -> int:
        """The per-thread capacity the backend can record into, given what the user asked
        for (a backend that writes from machine code may need a power of two)."""
        ...

    def record(self, target: Target, store: Store, options: RecordOptions) -> RunResult:
        """Run or attach to ``target``, recording into ``store`` until it ends or we detach."""
        ...

    def interrupt(self) -> None:
        """Ask a running :meth:`record` to detach soon (safe from a signal handler)."""
        ...

    # -- optional: the defaults do nothing --------------------------------------------------

    def start_early(self, target: Target) -> None:
        """Start ``target`` now, before the store exists, while the caller imports the
        rest; :meth:`record` of the same target takes it over. Default: nothing (the
        program starts in :meth:`record`)."""
        return None

    def cancel_early(self) -> None:
        """Kill what :meth:`start_early` started for a run that will not record it;
        nothing if it started nothing."""
        return None

    def prepare(self, store: Store) -> None:
        """Called once the store exists, before the caller starts any thread of its own
        (the ptrace backend forks its tracer process here). Default: nothing."""
        return None

    def release(self) -> None:
        """Called after :meth:`record`, even when it raised: let go of what
        :meth:`prepare` made. Default: nothing."""
        return None

    def live(self, first_id: int) -> tuple[np.ndarray | None, list[ModuleMap]]:
        """While a run goes on: the block-table rows complete so far from id ``first_id``
        on (None for encodings with no table), and the modules known so far, so that a
        trace file cut short still decodes and symbolizes. Default: nothing known."""
        return None, []

    def live_processes(self) -> list[ProcessInfo]:
        """While a run goes on: the processes known so far (as :attr:`RunResult.processes`
        will list them), so that a trace file cut short knows them. Default: none."""
        return []

    def snapshot_soon(self) -> bool:
        """While a run goes on, a snapshot is asked for (SIGUSR2; safe from a signal
        handler): True when the backend will call ``RecordOptions.on_snapshot`` itself
        soon, with a thread stopped and its registers and stack; False (the default):
        the caller copies the store as the program runs."""
        return False


# name -> "module:Class"; the order is the order of preference for "auto".
_REGISTRY: dict[str, str] = {
    "stalker": "branchtrace.backends.stalker:StalkerBackend",
    "ptrace": "branchtrace.backends.ptrace:PtraceBackend",
}


def names() -> list[str]:
    return list(_REGISTRY)


def load(name: str) -> Backend:
    """Instantiate a backend by name (unknown names are a usage error)."""
    try:
        spec = _REGISTRY[name]
    except KeyError:
        raise UsageError(
            f"unknown backend {name!r} (choose from: auto, {', '.join(_REGISTRY)})"
        ) from None
    module_name, class_name = spec.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    backend: Backend = cls()
    return backend


@dataclass(frozen=True)
class Choice:
    backend: Backend
    reasons: tuple[str, ...]


def probe_all() -> list[tuple[str, Probe]]:
    """Every registered backend with whether it can run here and why (for doctor)."""
    result = []
    for name in _REGISTRY:
        try:
            result.append((name, load(name).probe()))
        except ImportError as exc:  # a backend whose own module cannot load
            result.append((name, Probe(False, f"cannot load: {exc}")))
    return result


def select(requested: str | None = "auto", environ: dict[str, str] | None = None) -> Choice:
    """Choose the backend: an explicit name, else $BRANCHTRACE_BACKEND, else the first
    available one in order of preference. Returns it with the reasons for the choice."""
    env = os.environ if environ is None else environ
    name = requested or "auto"
    reasons: list[str] = []
    if name == "auto" and env.get(ENV_BACKEND):
        name = env[ENV_BACKEND]
        reasons.append(f"{ENV_BACKEND}={name}")
    if name != "auto":
        backend = load(name)
        probe = backend.probe()
        if not probe.available:
            raise BackendUnavailable(f"backend {name!r} cannot run here: {probe.reason}")
        reasons.append(f"{name}: requested; {probe.reason}")
        return Choice(backend, tuple(reasons))
    candidates: Sequence[str] = list(_REGISTRY)
    for candidate in candidates:
        backend = load(candidate)
        probe = backend.probe()
        if probe.available:
            reasons.append(f"{candidate}: chosen; {probe.reason}")
            return Choice(backend, tuple(reasons))
        reasons.append(f"{candidate}: skipped [backend-unavailable]; {probe.reason}")
    raise BackendUnavailable("no backend can run here: " + "; ".join(reasons))
