"""Symbols: process maps, ELF symbol tables, DWARF line tables, and the resolver.

Typical use::

    modules = modules_from_maps(read_maps(pid))
    sym = Symbolizer(modules)
    sym.describe(address).short()         # "step2+0x11 (crash)"
    arrays = sym.resolve(branches["to_ip"])  # vectorized
    module_image(module).image            # a module's ELF image, if the file is still the traced one
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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


#: Where each name lives: imported on first use (PEP 562), so that ``symbols.maps`` (the
#: recorders read process maps while the program starts) does not import numpy, ELF,
#: DWARF and the resolver (~0.1 s, on the critical path of ``branchtrace run``'s start).
_WHERE = {
    "ElfImage": "elf",
    "FunctionTable": "symtab",
    "LineTable": "dwarf",
    "LoadSegment": "elf",
    "Location": "resolver",
    "ModuleImage": "images",
    "RawSymbol": "symtab",
    "ResolvedArrays": "resolver",
    "Symbolizer": "resolver",
    "clear_elf_cache": "elf",
    "is_deleted": "maps",
    "is_special": "maps",
    "line_table_for": "dwarf",
    "load_elf": "elf",
    "merge_modules": "maps",
    "module_image": "images",
    "modules_from_maps": "maps",
    "parse_maps": "maps",
    "read_line_table": "dwarf",
    "read_maps": "maps",
    "strip_deleted": "maps",
}


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{where}"), name)
    globals()[name] = value
    return value
