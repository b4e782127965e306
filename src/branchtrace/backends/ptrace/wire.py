"""What crosses between branchtrace and its ptrace tracer process, and how.

The two processes are one program forked (see :mod:`.process`), so messages are
pickled objects, each sent as an 8-byte little-endian length and the pickle. The
parent sends one :class:`Request`; the tracer answers with any number of
:class:`Modules` and :class:`Processes` while it runs, then one :class:`Reply`. At a
trigger's call (``run --trigger``) the tracer sends a :class:`Snapshot` and waits for
the parent's :data:`SNAPSHOT_TAKEN` before it steps on.
Records never cross here: the tracer writes them into the shared-memory store.
"""

from __future__ import annotations

import os
import pickle
import struct
import traceback
from dataclasses import dataclass

from ...model import ModuleMap, ProcessInfo, StackSnapshot
from .. import Trigger
from .stepper import StepResult

_LENGTH = struct.Struct("<Q")


@dataclass(frozen=True)
class Request:
    """Trace a program (``argv``) or a running process (``pid``)."""

    argv: tuple[str, ...] = ()
    env: dict[str, str] | None = None
    disable_aslr: bool = False
    pid: int | None = None
    path: str = ""                   # spawn: the executable, to find the start point's bias
    start_vaddr: int | None = None   # spawn: the ELF address to step from (None: at once)
    duration: float | None = None    # detach after this many seconds
    follow_children: bool = True     # trace the processes the target starts
    hold_on_crash: bool = False      # run --gdb: leave the program stopped at a crash
    ptracer: int | None = None       # spawn: may ptrace the program too (Target.ptracer)
    trigger: Trigger | None = None   # snapshots at calls of this function


@dataclass(frozen=True)
class Modules:
    """The module maps of the target as they are now (sent each time they change)."""

    modules: list[ModuleMap]


@dataclass(frozen=True)
class Processes:
    """Every process traced so far (sent each time one appears, execs or ends)."""

    processes: list[ProcessInfo]


@dataclass(frozen=True)
class Snapshot:
    """A trigger's call: the program waits until the parent has copied the store."""

    reason: str
    pid: int
    tid: int
    pc: int
    stack: StackSnapshot | None


#: The parent's answer to a :class:`Snapshot`: the store is copied, step on.
SNAPSHOT_TAKEN = "snapshot-taken"


@dataclass(frozen=True)
class Reply:
    """How the run ended (``result``), or the error that stopped it."""

    result: StepResult | None
    pid: int = 0
    error: BaseException | None = None
    where: str = ""                  # the tracer's traceback of an unexpected error


def error_reply(exc: BaseException, pid: int = 0) -> Reply:
    return Reply(None, pid, exc, "".join(traceback.format_exception(exc)))


def send(fd: int, message: object) -> None:
    """Write one message (a blocking write of the whole of it)."""
    try:
        data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # an error we cannot pickle: send its text instead
        if not isinstance(message, Reply):
            raise
        data = pickle.dumps(error_reply(RuntimeError(f"{exc}; {message.where}"), message.pid))
    view = memoryview(_LENGTH.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def receive(fd: int) -> object | None:
    """Read one message; None when the other side closed the pipe first."""
    head = _read_exactly(fd, _LENGTH.size)
    if head is None:
        return None
    (length,) = _LENGTH.unpack(head)
    body = _read_exactly(fd, length)
    return None if body is None else pickle.loads(body)


def _read_exactly(fd: int, n: int) -> bytes | None:
    parts: list[bytes] = []
    while n:
        chunk = os.read(fd, n)
        if not chunk:
            return None
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)
