"""The data model shared by every part of branchtrace.

A recorded branch is a transfer of control from one instruction (``from_ip``) to
an address that is not that instruction's fall-through (``to_ip``). Branches are
kept in bulk as numpy arrays of :data:`BRANCH_DTYPE`; :class:`Branch` is the
one-at-a-time view for small cases and for the API.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np


class BranchKind(IntEnum):
    """What kind of instruction (or event) made the branch.

    The numeric values are part of the store and trace-file formats: never renumber.
    """

    OTHER = 0
    CALL = 1            # direct call
    RETURN = 2
    JUMP = 3            # direct unconditional jump
    COND = 4            # conditional branch, taken (not-taken ones are never recorded)
    INDIRECT_JUMP = 5
    INDIRECT_CALL = 6
    SYSCALL = 7         # a system call that did not return to its fall-through (sigreturn, ...)
    INTERRUPT = 8       # asynchronous transfer: signal delivery and the like

    @property
    def label(self) -> str:
        """The kind's name as reports and tables spell it: ``"call"``, ``"cond"``, ..."""
        return self.name.lower()

    @classmethod
    def from_label(cls, label: str) -> BranchKind:
        return cls[label.upper()]


#: One branch in the canonical array form, per thread, oldest first.
BRANCH_DTYPE = np.dtype([("from_ip", "<u8"), ("to_ip", "<u8"), ("kind", "u1")])


def empty_branches(n: int = 0) -> np.ndarray:
    """A zero-filled canonical branch array of length ``n``."""
    return np.zeros(n, dtype=BRANCH_DTYPE)


@dataclass(frozen=True, slots=True)
class Branch:
    from_ip: int
    to_ip: int
    kind: BranchKind
    tid: int

    def __str__(self) -> str:
        return f"{self.kind.label} {self.from_ip:#x} -> {self.to_ip:#x} [{self.tid}]"


def branches_of(array: np.ndarray, tid: int) -> list[Branch]:
    """Turn a (small) canonical array into :class:`Branch` objects."""
    return [
        Branch(int(r["from_ip"]), int(r["to_ip"]), BranchKind(int(r["kind"])), tid)
        for r in array
    ]


@dataclass(frozen=True, slots=True)
class Mapping:
    """One line of /proc/PID/maps."""

    start: int
    end: int
    perms: str
    offset: int
    path: str  # "" for anonymous memory, "[vdso]", "[stack]", ... for special ones

    @property
    def executable(self) -> bool:
        return "x" in self.perms


@dataclass(frozen=True, slots=True)
class ModuleMap:
    """A file mapped into the target: where it lies and how to get back to file addresses.

    ``bias`` is what is added to the ELF virtual addresses of the file to get run-time
    addresses (0 for non-PIE executables).
    """

    path: str
    start: int
    end: int
    bias: int
    build_id: str = ""
    mappings: tuple[Mapping, ...] = field(default=(), compare=False)

    def contains(self, address: int) -> bool:
        """Whether ``address`` lies in the module's span."""
        return self.start <= address < self.end

    @property
    def name(self) -> str:
        """The module's base name (``libc.so.6``)."""
        return self.path.rsplit("/", 1)[-1] or self.path


@dataclass(frozen=True, slots=True)
class Gap:
    """Records that were lost, as a value in the data.

    ``index`` is where in the thread's branch sequence the gap lies (the number of
    branches kept before it); ``count`` is how many records were lost there.
    """

    tid: int
    index: int
    count: int
    reason: str


@dataclass(frozen=True, slots=True)
class StackSnapshot:
    """A thread's registers and a copy of its stack at one moment (a fatal signal), for
    unwinding its call stack offline (symbols/unwind.py). ``registers`` are (DWARF
    register number, value) pairs: 0 rax, 1 rdx, 2 rcx, 3 rbx, 4 rsi, 5 rdi, 6 rbp,
    7 rsp, 8-15 r8-r15, 16 rip; ``data`` is the stack's bytes from address ``base``."""

    tid: int
    registers: tuple[tuple[int, int], ...]
    base: int
    data: bytes

    def register(self, number: int) -> int | None:
        return next((v for r, v in self.registers if r == number), None)


@dataclass(frozen=True, slots=True)
class ExitInfo:
    """How the target ended (or that we let it go on)."""

    status: str                      # "exited", "signaled", "detached", "running", or
                                     # "unknown" (a trace file that does not say: cut short)
    code: int | None = None          # exit code when status == "exited"
    signal: int | None = None        # signal number when status == "signaled"
    fault_address: int | None = None  # siginfo si_addr of the fatal signal, if any
    fault_pc: int | None = None       # where the fatal signal hit
    tid: int | None = None            # the thread that took the fatal signal
    core_dumped: bool = False
    stack: StackSnapshot | None = field(default=None, compare=False, repr=False)
    #: ``run --gdb``: the program was stopped, alive, before ``signal`` was delivered
    #: (and handed to a debugger); not kept in trace files
    held: bool = field(default=False, compare=False)

    @property
    def shell_status(self) -> int:
        """The status a shell would report: the exit code, or 128 + signal."""
        if self.status == "exited" and self.code is not None:
            return self.code
        if self.status == "signaled" and self.signal is not None:
            return 128 + self.signal
        return 0


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """One process of a run: the program started (or attached to), or a process it
    started (fork, vfork, clone without CLONE_THREAD, posix_spawn), followed by default.

    Every recorded thread belongs to exactly one process. An exec keeps the pid and
    replaces ``argv`` and ``modules`` (the trace notes it); ``modules`` are the maps the
    process's branches symbolize against.
    """

    pid: int
    ppid: int                        # the parent's pid (0: not traced, the first process)
    argv: tuple[str, ...]            # at its start or its last exec; () when not known
    exit: ExitInfo
    modules: tuple[ModuleMap, ...] = ()
    threads: tuple[int, ...] = ()    # tids, in order of appearance; the first is ``pid``
    start_ns: int = 0                # when it was first seen (Unix epoch, ns); 0: not known
    end_ns: int = 0                  # when it ended or was let go; 0: not known
