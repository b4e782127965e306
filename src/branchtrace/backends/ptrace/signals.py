"""What a traced thread's signals look like to the stepper: which ones count as
faults (and what is kept of one) or job-control stops, and which are pending or caught
(from /proc)."""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass

from ...model import StackSnapshot
from ..linux import sys as pt

#: the whole wait status of a single-step trap: stopped by SIGTRAP, no event bits
STEP_TRAP = 0x7F | (signal.SIGTRAP << 8)
GROUP_STOP_SIGNALS = {signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU}
FAULT_SIGNALS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGTRAP}
SI_KERNEL = 0x80   # si_code of a SIGTRAP the kernel sent for an int3


@dataclass
class Fault:
    """A fault signal about to be delivered: what the exit report says if it kills."""

    signal: int
    address: int | None   # si_addr
    pc: int
    tid: int
    stack: StackSnapshot | None = None


#: ptrace's user_regs_struct names of the DWARF registers 0-16 (symbols/unwind.py)
_DWARF_REGISTERS = ("rax", "rdx", "rcx", "rbx", "rsi", "rdi", "rbp", "rsp", "r8", "r9",
                    "r10", "r11", "r12", "r13", "r14", "r15", "rip")
STACK_COPY_BYTES = 256 * 1024


def stack_of(tid: int, read: Callable[[int, int], bytes], span: tuple[int, int] | None
             ) -> StackSnapshot | None:
    """The registers of a stopped thread and up to 256 KiB of its stack from the start
    of ``span`` (its stack pointer, or past a stack overflow the stack's mapping) to its
    end; from rsp when the span is not known; None if unreadable."""
    try:
        regs = tuple((i, pt.peekuser(tid, pt.REG_OFFSET[name]) & 0xFFFF_FFFF_FFFF_FFFF)
                     for i, name in enumerate(_DWARF_REGISTERS))
    except OSError:
        return None
    base, end = span if span is not None else (regs[7][1], regs[7][1] + STACK_COPY_BYTES)
    n = max(0, min(STACK_COPY_BYTES, end - base))
    return StackSnapshot(tid, regs, base, read(base, n))


def bit(sig: int) -> int:
    """The bit of ``sig`` in the /proc signal masks."""
    return 1 << (sig - 1)


def pending_signals(tid: int) -> int:
    """Bitmask of signals pending for a thread (its own and the process's) that it does
    not block: those it will take as soon as it runs."""
    pending = blocked = 0
    try:
        with open(f"/proc/{tid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(("SigPnd:", "ShdPnd:")):
                    pending |= int(line.split()[1], 16)
                elif line.startswith("SigBlk:"):
                    blocked = int(line.split()[1], 16)
    except OSError:
        pass
    return pending & ~blocked


def caught_signals(tid: int) -> int:
    """Bitmask of the signals the thread's process has handlers for."""
    try:
        with open(f"/proc/{tid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0
