"""The processes a :class:`~.stepper.Stepper` traces: the program, and every process it
starts (fork, vfork, clone without ``CLONE_THREAD``, posix_spawn), each with its own
memory, decoded instructions, module maps, threads, start point and exit.

A process that forks before its start point was reached hands its breakpoint on to the
child (the ``int3`` is in the child's copy of the memory). After an exec, a child's
modules are those of its new image (an exec'd program's maps may cover the same
addresses as its parent's); the first process keeps the union of its snapshots, as it
always did.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ...errors import TargetError
from ..linux import sys as pt
from ...isa import InsnCache
from ...model import ExitInfo, ModuleMap, ProcessInfo
from ...symbols.maps import merge_modules, modules_from_maps, read_maps
from ..linux.program import read_argv
from .memory import TargetMemory
from .signals import Fault


@dataclass(eq=False)
class Proc:
    pid: int
    ppid: int                                   # 0: the first process
    argv: tuple[str, ...]
    start_ns: int = field(default_factory=time.time_ns)
    modules: list[ModuleMap] = field(default_factory=list)
    order: list[int] = field(default_factory=list)     # tids, in order of appearance
    live: set[int] = field(default_factory=set)        # tids not gone yet
    exit: ExitInfo | None = None
    end_ns: int = 0
    faults: dict[int, Fault] = field(default_factory=dict)   # by signal number, the latest
    breakpoint: tuple[int, int] | None = None   # (address, original byte) of the start point
    started: bool = False                       # stepping (past the start point)
    detached_before_start: bool = False
    mem: TargetMemory = field(default_factory=TargetMemory)

    def __post_init__(self) -> None:
        self.insns = InsnCache(self.read)

    def open(self) -> None:
        """(Re)open the memory (at the start and after an exec): a new image."""
        self.insns.invalidate()
        self.mem.open(self.pid)

    def read(self, address: int, n: int) -> bytes:
        """Code, as the program has it (never our start-point int3)."""
        data = self.mem.read(address, n)
        if self.breakpoint is not None:
            bp, original = self.breakpoint
            if address <= bp < address + len(data):
                i = bp - address
                data = data[:i] + bytes([original]) + data[i + 1:]
        return data

    def stack_span(self, tid: int) -> tuple[int, int] | None:
        """Where to copy thread ``tid``'s stack from and to: from its stack pointer to
        the end of the mapping that holds it; after a stack overflow (the pointer went
        past the stack, into its guard) from the start of the mapping just above, if
        it is within 256 KiB."""
        try:
            rsp = pt.peekuser(tid, pt.REG_OFFSET["rsp"]) & 0xFFFF_FFFF_FFFF_FFFF
            maps = read_maps(self.pid)
        except (OSError, TargetError):
            return None
        held = next(((rsp, m.end) for m in maps if m.start <= rsp < m.end), None)
        above = min(((m.start, m.end) for m in maps if rsp < m.start <= rsp + (256 << 10)),
                    default=None)
        return held or above

    def snapshot_maps(self, fresh: bool = False) -> bool:
        """Read the module maps again (``fresh``: forget the old ones, a new image);
        whether they changed."""
        try:
            maps = read_maps(self.pid)
        except TargetError:
            return False
        found = modules_from_maps(maps)
        modules = found if fresh else merge_modules(self.modules, found)
        changed = modules != self.modules
        self.modules = modules
        return changed

    def ended(self) -> None:
        if not self.end_ns:
            self.end_ns = time.time_ns()

    def info(self) -> ProcessInfo:
        return ProcessInfo(self.pid, self.ppid, self.argv, self.exit or ExitInfo("detached"),
                           tuple(self.modules), tuple(self.order), self.start_ns, self.end_ns)

    def live_info(self) -> ProcessInfo:
        """As :meth:`info`, while the run goes on (not ended yet: ``running``)."""
        return ProcessInfo(self.pid, self.ppid, self.argv, self.exit or ExitInfo("running"),
                           tuple(self.modules), tuple(self.order), self.start_ns, self.end_ns)


cmdline = read_argv
