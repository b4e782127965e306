"""Symbols: process maps, ELF symbol tables, DWARF line tables, and the resolver.

Typical use::

    modules = modules_from_maps(read_maps(pid))
    sym = Symbolizer(modules)
    sym.describe(address).short()         # "step2+0x11 (crash)"
    arrays = sym.resolve(branches["to_ip"])  # vectorized
    module_image(module).image            # a module's ELF image, if the file is still the traced one
"""

from __future__ import annotations

from .dwarf import LineTable, line_table_for, read_line_table
from .elf import (
    ElfImage,
    LoadSegment,
    clear_elf_cache,
    load_elf,
)
from .images import ModuleImage, module_image
from .maps import (
    is_deleted,
    is_special,
    merge_modules,
    modules_from_maps,
    parse_maps,
    read_maps,
    strip_deleted,
)
from .resolver import Location, ResolvedArrays, Symbolizer
from .symtab import FunctionTable, RawSymbol

__all__ = [
    "ElfImage",
    "FunctionTable",
    "LineTable",
    "LoadSegment",
    "Location",
    "ModuleImage",
    "RawSymbol",
    "ResolvedArrays",
    "Symbolizer",
    "clear_elf_cache",
    "is_deleted",
    "is_special",
    "line_table_for",
    "load_elf",
    "merge_modules",
    "module_image",
    "modules_from_maps",
    "parse_maps",
    "read_line_table",
    "read_maps",
    "strip_deleted",
]
