"""Symbols: process maps, ELF symbol tables, DWARF line tables, and the resolver.

Typical use::

    modules = modules_from_maps(read_maps(pid))
    sym = Symbolizer(modules)
    sym.describe(address).short()         # "step2+0x11 (crash)"
    arrays = sym.resolve(branches["to_ip"])  # vectorized
    module_image(module).image            # a module's ELF image, if the file is still the traced one
"""

from __future__ import annotations

from types import ModuleType
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


#: Where each name lives: the submodules are imported on first use of a name (PEP 562),
#: so that importing one of them (``symbols.maps``: the recorders read process maps
#: while the program starts) does not import the others (DWARF, the resolver).
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


def _module(where: str) -> ModuleType:
    # plain imports, not importlib: the readers' code never imports by a computed name
    # (tests/reliability/test_security.py)
    from . import dwarf, elf, images, maps, resolver, symtab

    return {"dwarf": dwarf, "elf": elf, "images": images, "maps": maps,
            "resolver": resolver, "symtab": symtab}[where]


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_module(where), name)
    globals()[name] = value
    return value
