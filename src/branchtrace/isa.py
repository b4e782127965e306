"""x86-64 instruction classification: which instructions are branches, and of what kind.

Decoding uses capstone, imported lazily; :func:`disassembler` is the one place its handles
are made. :func:`classify` answers for one instruction (:func:`is_conditional` for a
mnemonic alone); :class:`InsnCache` caches the
answers per address for a stepping tracer.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

from .model import BranchKind

#: ``kind`` of an instruction that never transfers control (only a signal can move it).
NOT_A_BRANCH = -1

_COND_JUMPS = frozenset(
    "ja jae jb jbe jc je jg jge jl jle jna jnae jnb jnbe jnc jne jng jnge jnl jnle jno "
    "jnp jns jnz jo jp jpe jpo js jz jcxz jecxz jrcxz loop loope loopne loopz loopnz".split()
)
_SYSCALLS = frozenset(("syscall", "sysenter", "int", "int1", "int3", "into"))


@dataclass(frozen=True, slots=True)
class Insn:
    address: int
    size: int
    kind: int          # a BranchKind value, or NOT_A_BRANCH
    text: str          # "mnemonic operands"

    @property
    def fallthrough(self) -> int:
        return self.address + self.size


@functools.cache
def disassembler(detail: bool) -> Any:
    """The x86-64 capstone handle, made on first use: one with instruction details
    (groups, operands: what :func:`classify` needs) and one without.

    Two handles because details cost: on 512 KiB of libc's code, ``disasm_lite`` on a
    handle without details is ~3x faster than on one with (0.08 s against 0.22 s for
    125k instructions), and ~8x faster than ``disasm`` with details (0.63 s), which is
    what sizes and texts alone would otherwise pay. Use ``detail=False`` whenever the
    address, size, mnemonic and operand text are enough.
    """
    import capstone

    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.detail = detail
    return md


def is_conditional(mnemonic: str) -> bool:
    """Whether capstone's ``mnemonic`` is a conditional jump (jcc, jrcxz, loop; with or
    without a prefix such as ``bnd``): the instructions whose taken branches are
    :attr:`BranchKind.COND`."""
    return mnemonic.rsplit(" ", 1)[-1] in _COND_JUMPS


def _kind_of(insn: Any) -> int:
    import capstone
    from capstone import x86

    mnemonic = insn.mnemonic
    # capstone spells prefixed branches "bnd jmp", "notrack jmp", "rep ret"...
    base = mnemonic.rsplit(" ", 1)[-1]
    groups = set(insn.groups)
    if capstone.CS_GRP_RET in groups or base in ("ret", "retf", "retq"):
        return BranchKind.RETURN
    if capstone.CS_GRP_IRET in groups:
        return BranchKind.OTHER
    if capstone.CS_GRP_CALL in groups or base == "call":
        direct = len(insn.operands) == 1 and insn.operands[0].type == x86.X86_OP_IMM
        return BranchKind.CALL if direct else BranchKind.INDIRECT_CALL
    if base in _COND_JUMPS:
        return BranchKind.COND
    if capstone.CS_GRP_JUMP in groups or base in ("jmp", "ljmp"):
        direct = len(insn.operands) == 1 and insn.operands[0].type == x86.X86_OP_IMM
        return BranchKind.JUMP if direct else BranchKind.INDIRECT_JUMP
    if base in _SYSCALLS or capstone.CS_GRP_INT in groups:
        return BranchKind.SYSCALL if base in ("syscall", "sysenter", "int") else BranchKind.OTHER
    if base in ("ud2", "ud1", "ud0", "hlt", "xabort", "xbegin"):
        return BranchKind.OTHER
    return NOT_A_BRANCH


def classify(code: bytes, address: int) -> Insn | None:
    """Decode the first instruction of ``code`` (at ``address``); None if undecodable."""
    md = disassembler(detail=True)
    for insn in md.disasm(code, address, 1):
        return Insn(address, insn.size, _kind_of(insn), f"{insn.mnemonic} {insn.op_str}".strip())
    return None


class InsnCache:
    """Per-address cache of decoded instructions, reading code through ``read``.

    ``read(address, n)`` returns up to n bytes (fewer near the end of a mapping).
    Undecodable bytes are cached as a 1-byte non-branch so stepping can go on.
    """

    def __init__(self, read: Callable[[int, int], bytes]) -> None:
        self._read = read
        self._cache: dict[int, Insn] = {}

    def get(self, address: int) -> Insn:
        insn = self._cache.get(address)
        if insn is None:
            insn = self._decode(address)
            self._cache[address] = insn
        return insn

    def _decode(self, address: int) -> Insn:
        try:
            code = self._read(address, 16)
        except OSError:
            code = b""
        insn = classify(code, address) if code else None
        return insn if insn is not None else Insn(address, 1, BranchKind.OTHER, "(bad)")

    def invalidate(self) -> None:
        self._cache.clear()
