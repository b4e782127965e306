"""The call stack of a stopped thread, from its registers and a copy of its stack.

As ``perf record --call-graph dwarf`` does: the registers and the bytes of the stack at
one moment (a fatal signal, a snapshot) are enough to list the frames later, offline,
with the modules the trace records. Each step uses the CFI of the module holding the pc
(symbols/cfi.py: ``.eh_frame`` through ``.eh_frame_hdr``); where there is none, the frame
pointer (``rbp``: the caller's ``rbp`` at ``[rbp]``, the return address at
``[rbp + 8]``). A return address is looked up at ``address - 1`` (the call, not the
instruction after it), except after a signal frame, whose saved pc is the interrupted
instruction itself.

The walk ends, and :attr:`Stack.end` says why, at the outermost frame (the CFI of
``_start`` or ``clone`` leaves the return address undefined), at a pc in no module, when
the copy of the stack ends (``stack copy ends``), or when a step would not move up the
stack (a loop: a smashed stack).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..model import ModuleMap, StackSnapshot
from .cfi import RA, RBP, RSP, FrameRules, FrameTable, Reader
from .images import module_image

MAX_FRAMES = 256
_MASK = 0xFFFF_FFFF_FFFF_FFFF


@dataclass(frozen=True, slots=True)
class StackCopy:
    """Registers (DWARF numbers: 0 rax ... 7 rsp, 16 rip) and the stack's bytes from
    ``base`` (the stack pointer, usually) at one moment."""

    registers: dict[int, int]
    base: int
    data: bytes

    @classmethod
    def of(cls, snapshot: StackSnapshot) -> StackCopy:
        return cls(dict(snapshot.registers), snapshot.base, snapshot.data)

    def read(self, address: int) -> int | None:
        at = address - self.base
        if 0 <= at <= len(self.data) - 8:
            return int(struct.unpack_from("<Q", self.data, at)[0])
        return None


@dataclass(frozen=True, slots=True)
class Frame:
    pc: int              # the frame's pc (a return address for every frame but the first)
    sp: int              # its stack pointer (the CFA of the frame below)
    how: str             # "registers" (the first), "cfi", "frame pointer"


@dataclass(frozen=True, slots=True)
class Stack:
    frames: tuple[Frame, ...]     # innermost first
    end: str                      # why the walk stopped


class Unwinder:
    """Unwinds stacks of one process (its modules); CFI tables are loaded once."""

    def __init__(self, modules: Sequence[ModuleMap]) -> None:
        self.modules = tuple(sorted(modules, key=lambda m: m.start))
        self._tables: dict[int, FrameTable | None] = {}

    def _rules(self, pc: int) -> tuple[FrameRules | None, bool]:
        """(rules at pc, whether pc is in a module at all)."""
        for i, m in enumerate(self.modules):
            if m.start <= pc < m.end:
                if i not in self._tables:
                    image = module_image(m).image
                    self._tables[i] = FrameTable(image) if image is not None else None
                table = self._tables[i]
                if table is None:
                    return None, True
                return table.rules_at((pc - m.bias) & _MASK), True
        return None, False

    def unwind(self, copy: StackCopy) -> Stack:
        regs = dict(copy.registers)
        pc = regs.get(RA)
        if pc is None or RSP not in regs:
            return Stack((), "no registers")
        frames = [Frame(pc, regs[RSP], "registers")]
        after_signal = True        # the first pc is the faulting instruction itself
        while len(frames) < MAX_FRAMES:
            rules, known = self._rules(pc if after_signal else pc - 1)
            if not known:
                return Stack(tuple(frames), f"pc {pc:#x} is in no module")
            step = _by_cfi(rules, regs, copy) if rules is not None else None
            how = "cfi"
            if step is None:
                step = _by_frame_pointer(regs, copy)
                how = "frame pointer"
                if step is None:
                    end = "stack copy ends" if rules is None else "the frame's rules " \
                        "cannot be followed"
                    return Stack(tuple(frames), end)
            new_regs, ra = step
            if ra is None:
                return Stack(tuple(frames), "outermost frame")
            if ra == 0:
                return Stack(tuple(frames), "outermost frame (return address 0)")
            if new_regs.get(RSP, 0) <= regs[RSP] and not (rules and rules.signal_frame):
                return Stack(tuple(frames), "the stack pointer did not move up "
                                            "(a smashed stack?)")
            after_signal = bool(rules is not None and rules.signal_frame)
            regs, pc = new_regs, ra
            frames.append(Frame(pc, regs[RSP], how))
        return Stack(tuple(frames), f"{MAX_FRAMES} frames")


def unwind_snapshot(modules: Sequence[ModuleMap], snapshot: StackSnapshot) -> Stack:
    """The frames of a recorded stack copy, with the modules of its process."""
    return Unwinder(modules).unwind(StackCopy.of(snapshot))


def _by_cfi(rules: FrameRules, regs: dict[int, int], copy: StackCopy
            ) -> tuple[dict[int, int], int | None] | None:
    if rules.cfa_expr:
        cfa = _evaluate(rules.cfa_expr, regs, copy, None)
    else:
        base = regs.get(rules.cfa_reg)
        cfa = None if base is None else (base + rules.cfa_offset) & _MASK
    if cfa is None:
        return None
    new = dict(regs)
    new[RSP] = cfa
    for reg, rule in rules.regs.items():
        value: int | None
        if rule.kind == "offset":
            value = copy.read((cfa + rule.n) & _MASK)
        elif rule.kind == "val_offset":
            value = (cfa + rule.n) & _MASK
        elif rule.kind == "register":
            value = regs.get(rule.n)
        elif rule.kind == "expression":
            at = _evaluate(rule.expr, regs, copy, cfa)
            value = None if at is None else copy.read(at)
        elif rule.kind == "val_expression":
            value = _evaluate(rule.expr, regs, copy, cfa)
        elif rule.kind == "same":
            value = regs.get(reg)
        else:                                  # undefined
            if reg == rules.ra_reg:
                return new, None
            new.pop(reg, None)
            continue
        if value is None:
            if reg == rules.ra_reg:
                return None
            new.pop(reg, None)
        else:
            new[reg] = value
    if rules.ra_reg not in rules.regs:
        return None
    return new, new.get(rules.ra_reg)


def _by_frame_pointer(regs: dict[int, int], copy: StackCopy
                      ) -> tuple[dict[int, int], int | None] | None:
    rbp = regs.get(RBP)
    if rbp is None or rbp <= regs.get(RSP, 0):
        return None
    saved, ra = copy.read(rbp), copy.read(rbp + 8)
    if saved is None or ra is None:
        return None
    new = dict(regs)
    new[RBP], new[RSP], new[RA] = saved, rbp + 16, ra
    return new, ra


def _evaluate(expr: bytes, regs: dict[int, int], copy: StackCopy, push: int | None
              ) -> int | None:
    """A DWARF expression of the few operations CFI uses (register + offset, constants,
    arithmetic, dereference); None when it uses anything else or a value is missing."""
    stack: list[int] = [] if push is None else [push]
    r = Reader(expr, 0)
    try:
        while r.at < len(expr):
            op = r.u8()
            if 0x70 <= op <= 0x8F:                      # breg0..31
                base = regs.get(op - 0x70)
                if base is None:
                    return None
                stack.append((base + r.sleb()) & _MASK)
            elif 0x30 <= op <= 0x4F:                    # lit0..31
                stack.append(op - 0x30)
            elif op == 0x08:
                stack.append(r.u8())
            elif op in (0x10, 0x11):
                stack.append(r.uleb() if op == 0x10 else r.sleb() & _MASK)
            elif op == 0x06:                            # deref
                value = copy.read(stack.pop())
                if value is None:
                    return None
                stack.append(value)
            elif op == 0x23:                            # plus_uconst
                stack.append((stack.pop() + r.uleb()) & _MASK)
            elif op in _BINARY:
                b, a = stack.pop(), stack.pop()
                stack.append(_BINARY[op](a, b) & _MASK)
            else:
                return None
    except (IndexError, KeyError):
        return None
    return stack[-1] if stack else None


_BINARY: dict[int, Callable[[int, int], int]] = {
    0x1A: lambda a, b: a & b, 0x1C: lambda a, b: a - b, 0x21: lambda a, b: a | b,
    0x22: lambda a, b: a + b, 0x24: lambda a, b: a << (b & 63), 0x25: lambda a, b: a >> (b & 63),
    0x27: lambda a, b: a ^ b, 0x29: lambda a, b: int(a == b), 0x2A: lambda a, b: int(a >= b),
    0x2B: lambda a, b: int(a > b), 0x2C: lambda a, b: int(a <= b), 0x2D: lambda a, b: int(a < b),
    0x2E: lambda a, b: int(a != b), 0x1E: lambda a, b: a * b,
}
