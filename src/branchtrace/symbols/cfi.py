"""Call frame information (``.eh_frame``): how to find a frame's caller at a pc.

What an unwinder needs, for one pc of one ELF image: the rule for the *canonical frame
address* (CFA: the caller's stack pointer; a register plus an offset, or a DWARF
expression) and the rule for each saved register (``[CFA + n]``, ``CFA + n``, another
register, an expression). They come from the FDE that covers the pc, found through the
binary-search table of ``.eh_frame_hdr`` (the ``PT_GNU_EH_FRAME`` segment), so a lookup
parses one CIE and one FDE, never the whole section: cc1's 45,000 FDEs take pyelftools
41 s to parse; one lookup here takes well under a millisecond.

The format is the one the System V x86-64 ABI and the LSB give (DWARF 4 call frame
instructions with GCC's augmentations ``z``, ``R``, ``P``, ``L``, ``S``). Only x86-64
ELF is read. Anything unexpected gives ``None``: the unwinder then falls back to the
frame pointer.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .elf import ElfImage

#: DWARF register numbers of x86-64 (the System V ABI's table).
RBP, RSP, RA = 6, 7, 16
REGISTER_NAMES = ("rax", "rdx", "rcx", "rbx", "rsi", "rdi", "rbp", "rsp",
                  "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip")

# pointer encodings (DW_EH_PE_*)
_ABSPTR, _OMIT = 0x00, 0xFF
_PCREL, _DATAREL = 0x10, 0x30
_FORMATS = {0x00: "<Q", 0x02: "<H", 0x03: "<I", 0x04: "<Q", 0x0A: "<h", 0x0B: "<i", 0x0C: "<q"}


@dataclass(frozen=True, slots=True)
class Rule:
    """How to recover one register: ``kind`` is ``offset`` ([CFA + n]), ``val_offset``
    (CFA + n), ``register`` (the value of register n), ``expression`` ([value of the
    expression, with the CFA pushed]), ``val_expression``, ``same`` or ``undefined``."""

    kind: str
    n: int = 0
    expr: bytes = b""


@dataclass(slots=True)
class FrameRules:
    """The rules at one pc: the CFA (``cfa_reg + cfa_offset``, or ``cfa_expr``), the
    saved registers, and whether the function is a signal trampoline (``S``)."""

    cfa_reg: int = RSP
    cfa_offset: int = 8
    cfa_expr: bytes = b""
    regs: dict[int, Rule] = field(default_factory=dict)
    signal_frame: bool = False
    ra_reg: int = RA


class Reader:
    """Little-endian fields, LEB128 numbers and encoded pointers of CFI (and of the
    DWARF expressions in it) from ``data``, read at ``at``; ``base`` is its address."""

    def __init__(self, data: bytes, base: int) -> None:
        self.data, self.base, self.at = data, base, 0

    def u8(self) -> int:
        v = self.data[self.at]
        self.at += 1
        return v

    def unpack(self, fmt: str) -> int:
        v = struct.unpack_from(fmt, self.data, self.at)[0]
        self.at += struct.calcsize(fmt)
        return int(v)

    def uleb(self) -> int:
        result = shift = 0
        while True:
            b = self.u8()
            result |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return result

    def sleb(self) -> int:
        result = shift = 0
        while True:
            b = self.u8()
            result |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return result - (1 << shift) if b & 0x40 else result

    def encoded(self, enc: int, datarel: int = 0) -> int:
        """A pointer in encoding ``enc`` (the address it is read at is ``base + at``)."""
        if enc == _OMIT:
            return 0
        here = self.base + self.at
        fmt = enc & 0x0F
        if fmt == 0x01:
            value = self.uleb()
        elif fmt == 0x09:
            value = self.sleb()
        else:
            value = self.unpack(_FORMATS[fmt])
        rel = enc & 0x70
        if rel == _PCREL:
            value += here
        elif rel == _DATAREL:
            value += datarel
        elif rel != 0:
            raise ValueError(f"pointer encoding {enc:#x}")
        return value & 0xFFFF_FFFF_FFFF_FFFF


@dataclass(frozen=True, slots=True)
class _Cie:
    code_align: int
    data_align: int
    ra_reg: int
    fde_enc: int
    signal_frame: bool
    instructions: bytes
    z: bool                 # FDEs have augmentation data (its length first)


class FrameTable:
    """The CFI of one ELF image, looked up by file address."""

    def __init__(self, image: ElfImage) -> None:
        self.image = image
        self._hdr = image.eh_frame_hdr
        self._table: list[tuple[int, int]] | None = None
        self._cies: dict[int, _Cie] = {}

    def rules_at(self, vaddr: int) -> FrameRules | None:
        """The rules at file address ``vaddr``, or None when no FDE covers it."""
        try:
            fde = self._find(vaddr)
            if fde is None:
                return None
            return self._run_fde(fde, vaddr)
        except (ValueError, IndexError, KeyError, struct.error):
            return None

    def _index(self) -> list[tuple[int, int]]:
        if self._table is None:
            self._table = []
            if self._hdr is not None:
                start, size = self._hdr
                data = self.image.read_vaddr(start, size)
                r = Reader(data, start)
                if r.u8() != 1:
                    return self._table
                ptr_enc, count_enc, table_enc = r.u8(), r.u8(), r.u8()
                r.encoded(ptr_enc, start)
                count = r.encoded(count_enc, start)
                if table_enc != 0x3B:          # datarel | sdata4: what every linker writes
                    return self._table
                n = min(count, (len(data) - r.at) // 8)
                pairs = struct.unpack_from(f"<{2 * n}i", data, r.at)
                self._table = [((pairs[2 * i] + start) & 0xFFFF_FFFF_FFFF_FFFF,
                                (pairs[2 * i + 1] + start) & 0xFFFF_FFFF_FFFF_FFFF)
                               for i in range(n)]
        return self._table

    def _find(self, vaddr: int) -> tuple[int, int, int, bytes, _Cie] | None:
        """(FDE address, pc_begin, pc_range, instructions, CIE) of the FDE for vaddr."""
        import bisect
        table = self._index()
        k = bisect.bisect_right(table, (vaddr, 1 << 64)) - 1
        if k < 0:
            return None
        fde_addr = table[k][1]
        head = self.image.read_vaddr(fde_addr, 12)
        length = struct.unpack_from("<I", head)[0]
        if length in (0, 0xFFFFFFFF):
            return None
        data = self.image.read_vaddr(fde_addr, 4 + length)
        r = Reader(data, fde_addr)
        r.at = 4
        cie_ptr = r.unpack("<I")
        cie = self._cie(fde_addr + 4 - cie_ptr)
        pc_begin = r.encoded(cie.fde_enc)
        pc_range = r.encoded(cie.fde_enc & 0x0F)
        if not pc_begin <= vaddr < pc_begin + pc_range:
            return None
        if cie.z:
            r.at += r.uleb()
        return fde_addr, pc_begin, pc_range, data[r.at:], cie

    def _cie(self, addr: int) -> _Cie:
        cie = self._cies.get(addr)
        if cie is not None:
            return cie
        length = struct.unpack_from("<I", self.image.read_vaddr(addr, 4))[0]
        data = self.image.read_vaddr(addr, 4 + length)
        r = Reader(data, addr)
        r.at = 4
        if r.unpack("<I") != 0:
            raise ValueError("not a CIE")
        version = r.u8()
        end = data.index(b"\0", r.at)
        aug = data[r.at:end].decode("ascii")
        r.at = end + 1
        if version == 4:
            r.at += 2                       # address and segment sizes
        code_align, data_align = r.uleb(), r.sleb()
        ra_reg = r.u8() if version == 1 else r.uleb()
        fde_enc, signal = _ABSPTR, False
        if aug.startswith("z"):
            aug_len = r.uleb()
            after = r.at + aug_len
            for ch in aug[1:]:
                if ch == "R":
                    fde_enc = r.u8()
                elif ch == "P":
                    r.encoded(r.u8())
                elif ch == "L":
                    r.u8()
                elif ch == "S":
                    signal = True
            r.at = after
        elif aug:
            raise ValueError(f"CIE augmentation {aug!r}")
        cie = _Cie(code_align, data_align, ra_reg, fde_enc, signal, data[r.at:],
                   aug.startswith("z"))
        self._cies[addr] = cie
        return cie

    def _run_fde(self, fde: tuple[int, int, int, bytes, _Cie], vaddr: int) -> FrameRules:
        _, pc_begin, _, instructions, cie = fde
        rules = FrameRules(signal_frame=cie.signal_frame, ra_reg=cie.ra_reg)
        _execute(cie.instructions, cie, rules, None, 0, 1 << 64)
        initial = dict(rules.regs)
        _execute(instructions, cie, rules, initial, pc_begin, vaddr)
        return rules


def _execute(code: bytes, cie: _Cie, rules: FrameRules, initial: dict[int, Rule] | None,
             loc: int, target: int) -> None:
    """Run call frame instructions until the location passes ``target``."""
    r = Reader(code, 0)
    stack: list[tuple[int, int, bytes, dict[int, Rule]]] = []
    da = cie.data_align
    while r.at < len(code):
        op = r.u8()
        high, low = op & 0xC0, op & 0x3F
        if high == 0x40:                                   # advance_loc
            loc += low * cie.code_align
            if loc > target:
                return
            continue
        if high == 0x80:                                   # offset
            rules.regs[low] = Rule("offset", r.uleb() * da)
            continue
        if high == 0xC0:                                   # restore
            _restore(rules, initial, low)
            continue
        if op == 0x00:
            continue
        if op in (0x02, 0x03, 0x04):                       # advance_loc1/2/4
            delta = r.u8() if op == 0x02 else r.unpack("<H" if op == 0x03 else "<I")
            loc += delta * cie.code_align
            if loc > target:
                return
        elif op == 0x01:                                   # set_loc
            loc = r.encoded(cie.fde_enc)
            if loc > target:
                return
        elif op == 0x05:
            reg = r.uleb()
            rules.regs[reg] = Rule("offset", r.uleb() * da)
        elif op == 0x06:
            _restore(rules, initial, r.uleb())
        elif op == 0x07:
            rules.regs[r.uleb()] = Rule("undefined")
        elif op == 0x08:
            rules.regs[r.uleb()] = Rule("same")
        elif op == 0x09:
            reg = r.uleb()
            rules.regs[reg] = Rule("register", r.uleb())
        elif op == 0x0A:                                   # remember_state
            stack.append((rules.cfa_reg, rules.cfa_offset, rules.cfa_expr, dict(rules.regs)))
        elif op == 0x0B:                                   # restore_state
            if stack:
                rules.cfa_reg, rules.cfa_offset, rules.cfa_expr, rules.regs = stack.pop()
        elif op == 0x0C:
            rules.cfa_reg, rules.cfa_offset, rules.cfa_expr = r.uleb(), r.uleb(), b""
        elif op == 0x0D:
            rules.cfa_reg, rules.cfa_expr = r.uleb(), b""
        elif op == 0x0E:
            rules.cfa_offset = r.uleb()
        elif op == 0x0F:                                   # def_cfa_expression
            n = r.uleb()
            rules.cfa_expr = code[r.at:r.at + n]
            r.at += n
        elif op in (0x10, 0x16):                           # expression, val_expression
            reg, n = r.uleb(), r.uleb()
            rules.regs[reg] = Rule("expression" if op == 0x10 else "val_expression", 0,
                                   code[r.at:r.at + n])
            r.at += n
        elif op == 0x11:
            reg = r.uleb()
            rules.regs[reg] = Rule("offset", r.sleb() * da)
        elif op == 0x12:
            rules.cfa_reg, rules.cfa_offset, rules.cfa_expr = r.uleb(), r.sleb() * da, b""
        elif op == 0x13:
            rules.cfa_offset = r.sleb() * da
        elif op in (0x14, 0x15):                           # val_offset(_sf)
            reg = r.uleb()
            n = r.uleb() if op == 0x14 else r.sleb()
            rules.regs[reg] = Rule("val_offset", n * da)
        elif op == 0x2E:                                   # GNU_args_size
            r.uleb()
        elif op == 0x2F:                                   # GNU_negative_offset_extended
            reg = r.uleb()
            rules.regs[reg] = Rule("offset", -r.uleb() * da)
        else:
            raise ValueError(f"call frame instruction {op:#x}")


def _restore(rules: FrameRules, initial: dict[int, Rule] | None, reg: int) -> None:
    if initial is not None and reg in initial:
        rules.regs[reg] = initial[reg]
    else:
        rules.regs.pop(reg, None)
