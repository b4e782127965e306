"""A small ctypes binding to ptrace(2) and friends, for x86-64 Linux.

Only what the backends need. Every call that can fail raises ``OSError`` with the
errno, so callers can tell "the thread is gone" (ESRCH) from real errors.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_ptrace = _libc.ptrace
_ptrace.restype = ctypes.c_long
_ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

# requests
PTRACE_PEEKDATA = 2
PTRACE_PEEKUSER = 3
PTRACE_POKEDATA = 5
PTRACE_POKEUSER = 6
PTRACE_CONT = 7
PTRACE_SINGLESTEP = 9
PTRACE_DETACH = 17
PTRACE_SETOPTIONS = 0x4200
PTRACE_GETEVENTMSG = 0x4201
PTRACE_GETSIGINFO = 0x4202
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_LISTEN = 0x4208

# options
PTRACE_O_TRACESYSGOOD = 0x01
PTRACE_O_TRACEFORK = 0x02
PTRACE_O_TRACEVFORK = 0x04
PTRACE_O_TRACECLONE = 0x08
PTRACE_O_TRACEEXEC = 0x10
PTRACE_O_TRACEEXIT = 0x40

# events (status >> 16)
PTRACE_EVENT_FORK = 1
PTRACE_EVENT_VFORK = 2
PTRACE_EVENT_CLONE = 3
PTRACE_EVENT_EXEC = 4
PTRACE_EVENT_EXIT = 6
PTRACE_EVENT_STOP = 128

WALL = 0x40000000  # __WALL: wait for every thread, clone or not

# offsets into struct user (user_regs_struct comes first)
_REG_NAMES = (
    "r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax rip cs "
    "eflags rsp ss fs_base gs_base ds es fs gs"
).split()
REG_OFFSET = {name: 8 * i for i, name in enumerate(_REG_NAMES)}
RIP = REG_OFFSET["rip"]

SYS_TGKILL = 234


def _check(result: int) -> int:
    if result == -1:
        err = ctypes.get_errno()
        if err:
            raise OSError(err, os.strerror(err))
    return result


def ptrace(request: int, tid: int, addr: int = 0, data: int = 0) -> int:
    ctypes.set_errno(0)
    return _check(_ptrace(request, tid, addr, data))


def peekuser(tid: int, offset: int) -> int:
    """Read one word of the thread's user area (registers)."""
    return ptrace(PTRACE_PEEKUSER, tid, offset) & 0xFFFFFFFFFFFFFFFF


def pokeuser(tid: int, offset: int, value: int) -> None:
    ptrace(PTRACE_POKEUSER, tid, offset, value)


def peekdata(tid: int, address: int) -> int:
    return ptrace(PTRACE_PEEKDATA, tid, address) & 0xFFFFFFFFFFFFFFFF


def pokedata(tid: int, address: int, value: int) -> None:
    ptrace(PTRACE_POKEDATA, tid, address, value)


def geteventmsg(tid: int) -> int:
    msg = ctypes.c_ulong(0)
    ptrace(PTRACE_GETEVENTMSG, tid, 0, ctypes.addressof(msg))
    return msg.value


class SigInfo(ctypes.Structure):
    """The start of siginfo_t: enough for si_signo, si_code and si_addr."""

    _fields_ = [
        ("si_signo", ctypes.c_int),
        ("si_errno", ctypes.c_int),
        ("si_code", ctypes.c_int),
        ("_pad0", ctypes.c_int),
        ("si_addr", ctypes.c_uint64),   # union: fault address for SIGSEGV/SIGBUS/SIGILL/SIGFPE
        ("_rest", ctypes.c_byte * 104),
    ]


def getsiginfo(tid: int) -> SigInfo:
    info = SigInfo()
    ptrace(PTRACE_GETSIGINFO, tid, 0, ctypes.addressof(info))
    return info


def tgkill(tgid: int, tid: int, sig: int) -> None:
    ctypes.set_errno(0)
    _check(_syscall(ctypes.c_long(SYS_TGKILL), ctypes.c_long(tgid), ctypes.c_long(tid),
                    ctypes.c_long(sig)))


ADDR_NO_RANDOMIZE = 0x0040000


def disable_aslr() -> None:
    """Turn off address-space randomization for this process and what it execs."""
    _libc.personality.argtypes = [ctypes.c_ulong]
    _libc.personality.restype = ctypes.c_int
    current = _libc.personality(0xFFFFFFFF)
    if current != -1:
        _libc.personality(current | ADDR_NO_RANDOMIZE)


PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int) -> None:
    """Have the kernel send ``sig`` to this process when the thread that forked it ends."""
    _libc.prctl.restype = ctypes.c_int
    ctypes.set_errno(0)
    _check(_libc.prctl(ctypes.c_int(PR_SET_PDEATHSIG), ctypes.c_ulong(sig), ctypes.c_ulong(0),
                       ctypes.c_ulong(0), ctypes.c_ulong(0)))


PR_SET_CHILD_SUBREAPER = 36
PR_SET_PTRACER = 0x59616D61


def _prctl(option: int, value: int) -> int:
    _libc.prctl.restype = ctypes.c_int
    return int(_libc.prctl(ctypes.c_int(option), ctypes.c_ulong(value), ctypes.c_ulong(0),
                           ctypes.c_ulong(0), ctypes.c_ulong(0)))


def allow_ptracer(pid: int) -> None:
    """Let ``pid`` and its descendants attach to this process (and what it execs) under
    Yama's ptrace_scope 1; nothing without Yama (the call fails, harmlessly)."""
    _prctl(PR_SET_PTRACER, pid)


def become_subreaper() -> bool:
    """Orphaned descendants of this process become its children (so it can wait for a
    program whose parent, our tracer, has gone). False if the kernel refused."""
    return _prctl(PR_SET_CHILD_SUBREAPER, 1) == 0


def write_byte(tid: int, address: int, value: int) -> int:
    """Replace one byte of the tracee's memory; return the byte that was there."""
    word = peekdata(tid, address)
    old = word & 0xFF
    pokedata(tid, address, (word & ~0xFF) | (value & 0xFF))
    return old


def pack_word(value: int) -> bytes:
    return struct.pack("<Q", value & 0xFFFFFFFFFFFFFFFF)
