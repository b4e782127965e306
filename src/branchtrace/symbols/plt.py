"""Names for PLT stubs: ``puts@plt``, as GDB, perf and objdump show them.

A call to a shared library's function goes through a stub in the caller's PLT, which no
symbol table names. Each stub jumps through one GOT slot, and a relocation names the
slot's symbol. The stubs are read from their code, which covers every layout the GNU
linker makes on x86-64:

* ``.plt``: a header (PLT0), then 16-byte entries ``jmp *slot(%rip); push N; jmp PLT0``
  (lazy binding), or, when ``.plt.sec`` exists (IBT), ``endbr64; push N; bnd jmp PLT0``
  entries that only the lazy path reaches: ``N`` is the index of the slot's relocation
  in ``.rela.plt``.
* ``.plt.sec``: 16-byte entries ``endbr64; bnd jmp *slot(%rip)``.
* ``.plt.got``: 8- or 16-byte entries ``jmp *slot(%rip)`` for functions whose address is
  also taken (their slot has a ``GLOB_DAT`` relocation in ``.rela.dyn``).

``R_X86_64_JUMP_SLOT`` and ``R_X86_64_GLOB_DAT`` relocations name their symbol. An
``R_X86_64_IRELATIVE`` slot (libc's own calls to its ifunc'd functions: ``strlen``,
``memcpy``, ...) names none: its addend is the address of the ifunc resolver, whose
symbol is the function's name (``strnlen@plt``); objdump's ``*ABS*+0x9f550@plt`` is the
fallback when no symbol sits there. The header, PLT0, which every lazy stub jumps to, is
``.plt`` (objdump's label for it); other entries that are neither stay unnamed.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from .symtab import BINDING_GLOBAL, RawSymbol

_EM_X86_64 = "EM_X86_64"
_R_GLOB_DAT, _R_JUMP_SLOT, _R_IRELATIVE = 6, 7, 37
_ENDBR64 = b"\xf3\x0f\x1e\xfa"
_RELA = np.dtype([("offset", "<u8"), ("info", "<u8"), ("addend", "<i8")])
_PLT_SECTIONS = (".plt", ".plt.sec", ".plt.got")


def plt_symbols(elf: Any, symbols: list[RawSymbol]) -> list[RawSymbol]:
    """Sized symbols ``NAME@plt`` for the PLT entries of ``elf`` (a pyelftools ELFFile);
    ``symbols`` are its function symbols (they name the ifunc resolvers)."""
    if elf["e_machine"] != _EM_X86_64 or elf.elfclass != 64 or not elf.little_endian:
        return []
    plts = [s for s in (elf.get_section_by_name(n) for n in _PLT_SECTIONS)
            if s is not None and s["sh_type"] == "SHT_PROGBITS" and s["sh_size"] > 0]
    if not plts:
        return []
    slots, lazy = _slot_names(elf, symbols)
    out: list[RawSymbol] = []
    for sec in plts:
        base, data = int(sec["sh_addr"]), sec.data()
        step = int(sec["sh_entsize"]) if sec["sh_entsize"] in (8, 16) else 16
        end = base + len(data)
        for at in range(0, len(data) - step + 1, step):
            name = _entry_name(data[at:at + step], base + at, slots, lazy)
            if name is not None:
                name += "@plt"
            elif at == 0 and sec.name == ".plt":
                name = ".plt"                        # PLT0, the lazy binder's way in
            else:
                continue
            out.append(RawSymbol(name=name, start=base + at, size=step, sized=True,
                                 limit=end, binding=BINDING_GLOBAL))
    return out


def _entry_name(code: bytes, addr: int, slots: dict[int, str], lazy: list[str]
                ) -> str | None:
    """The name of the slot a PLT entry jumps through, or of its lazy relocation."""
    at = 4 if code.startswith(_ENDBR64) else 0
    if code[at:at + 1] == b"\xf2":                       # bnd
        at += 1
    if code[at:at + 2] == b"\xff\x25" and len(code) >= at + 6:
        disp = struct.unpack_from("<i", code, at + 2)[0]
        return slots.get(addr + at + 6 + disp)
    if code[at:at + 1] == b"\x68" and len(code) >= at + 5:   # push N: lazy stub (IBT)
        index = struct.unpack_from("<I", code, at + 1)[0]
        return lazy[index] if index < len(lazy) else None
    return None


def _slot_names(elf: Any, symbols: list[RawSymbol]) -> tuple[dict[int, str], list[str]]:
    """``{GOT slot address: name}`` from the PLT-related relocations, and the names of
    ``.rela.plt``'s relocations in order (what a lazy stub's ``push N`` indexes)."""
    resolvers: dict[int, RawSymbol] = {}
    for sym in symbols:
        kept = resolvers.get(sym.start)
        if kept is None or sym.preference() < kept.preference():
            resolvers[sym.start] = sym
    slots: dict[int, str] = {}
    lazy: list[str] = []
    for sec in elf.iter_sections():
        if sec["sh_type"] != "SHT_RELA" or sec["sh_entsize"] != _RELA.itemsize:
            continue
        data = sec.data()
        rela = np.frombuffer(data[:len(data) - len(data) % _RELA.itemsize], _RELA)
        kinds = rela["info"] & 0xFFFFFFFF
        wanted = (kinds == _R_JUMP_SLOT) | (kinds == _R_GLOB_DAT) | (kinds == _R_IRELATIVE)
        is_plt = sec.name == ".rela.plt"
        if not wanted.any():
            continue
        symtab = _linked_symtab(elf, sec)
        for offset, info, addend in rela[wanted if not is_plt else
                                         np.ones(len(rela), bool)].tolist():
            kind, index = info & 0xFFFFFFFF, info >> 32
            name = None
            if kind in (_R_JUMP_SLOT, _R_GLOB_DAT) and symtab is not None and index:
                name = symtab.get_symbol(index).name or None
            elif kind == _R_IRELATIVE:
                resolver = resolvers.get(addend)
                name = resolver.name if resolver is not None else f"*ABS*+{addend:#x}"
            if is_plt:
                lazy.append(name or "?")
            if name is not None:
                slots.setdefault(offset, name)
    return slots, lazy


def _linked_symtab(elf: Any, sec: Any) -> Any:
    link = int(sec["sh_link"])
    if not 0 < link < elf.num_sections():
        return None
    table = elf.get_section(link)
    return table if table["sh_type"] in ("SHT_DYNSYM", "SHT_SYMTAB") else None
