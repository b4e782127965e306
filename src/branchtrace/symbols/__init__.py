"""Symbols: process maps, ELF symbol tables, DWARF line tables, and the resolver.

Typical use::

    modules = modules_from_maps(read_maps(pid))
    sym = Symbolizer(modules)
    sym.describe(address).short()         # "step2+0x11 (crash)"
    arrays = sym.resolve(branches["to_ip"])  # vectorized
"""

from __future__ import annotations

from branchtrace.symbols.dwarf import LineTable, line_table_for, read_line_table
from branchtrace.symbols.elf import (
    ElfImage,
    LoadSegment,
    clear_elf_cache,
    load_elf,
)
from branchtrace.symbols.maps import (
    is_deleted,
    is_special,
    merge_modules,
    modules_from_maps,
    parse_maps,
    read_maps,
    strip_deleted,
)
from branchtrace.symbols.resolver import Location, ResolvedArrays, Symbolizer
from branchtrace.symbols.symtab import FunctionTable, RawSymbol

__all__ = [
    "ElfImage",
    "FunctionTable",
    "LineTable",
    "LoadSegment",
    "Location",
    "RawSymbol",
    "ResolvedArrays",
    "Symbolizer",
    "clear_elf_cache",
    "is_deleted",
    "is_special",
    "line_table_for",
    "load_elf",
    "merge_modules",
    "modules_from_maps",
    "parse_maps",
    "read_line_table",
    "read_maps",
    "strip_deleted",
]
