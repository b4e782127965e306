"""The resolver: run-time addresses -> module, function + offset, source file and line.

:class:`Symbolizer` works over the module maps of one process. Each module's ELF image
and line table load on first need and are shared by every Symbolizer (cached by file
identity). :meth:`Symbolizer.resolve` handles a whole array with one pass per module
over its distinct addresses, never a Python loop per address; :meth:`Symbolizer.describe` is the one-address view.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..model import ModuleMap
from .demangle import demangle
from .dwarf import LineTable, line_table_for
from .elf import ElfImage
from .images import module_image


@dataclass(frozen=True, slots=True)
class Location:
    """Where one address lies. Unknown parts are None."""

    address: int
    module: str | None = None     # the module's path as mapped
    function: str | None = None
    offset: int = 0               # from the function start (0 when the function is unknown)
    file: str | None = None       # source file, a full path when DWARF gives one
    line: int | None = None

    @property
    def module_name(self) -> str | None:
        """The module's base name (``libc.so.6``), or None."""
        if self.module is None:
            return None
        return self.module.rsplit("/", 1)[-1] or self.module

    def short(self) -> str:
        """``step2+0x11 (crash)``, perf style; ``0x7f12... (libc.so.6)`` without a name."""
        where = (f"{self.function}+{self.offset:#x}" if self.function is not None
                 else f"{self.address:#x}")
        return where if self.module is None else f"{where} ({self.module_name})"

    def source(self) -> str | None:
        """``crash.c:7`` (base name and line), or None when the line is unknown."""
        if self.file is None or not self.line:
            return None
        return f"{os.path.basename(self.file)}:{self.line}"

    def __str__(self) -> str:
        src = self.source()
        return self.short() if src is None else f"{self.short()} at {src}"


@dataclass(frozen=True, slots=True, eq=False)
class ResolvedArrays:
    """The symbolization of an address array: parallel arrays plus string tables.

    ``module`` indexes ``module_paths`` (the Symbolizer's modules, in order),
    ``function`` indexes ``function_names`` and ``file`` indexes ``file_names``; -1 is
    unknown. ``offset`` is from the function start (0 if unknown), ``vaddr`` the ELF
    file address (``address - bias``; the address itself outside every module) and
    ``line`` is 0 when unknown.
    """

    address: np.ndarray       # uint64
    module: np.ndarray        # int32
    vaddr: np.ndarray         # uint64
    function: np.ndarray      # int32
    offset: np.ndarray        # uint64
    file: np.ndarray          # int32
    line: np.ndarray          # int32
    module_paths: tuple[str, ...]
    function_names: tuple[str, ...]
    file_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.address)

    def locations(self) -> list[Location]:
        """Every row as a :class:`Location` (for reports over a few addresses)."""
        return [self.location(i) for i in range(len(self))]

    def location(self, i: int) -> Location:
        """Row ``i`` as a :class:`Location`."""
        mod, func, file = int(self.module[i]), int(self.function[i]), int(self.file[i])
        line = int(self.line[i])
        return Location(
            address=int(self.address[i]),
            module=self.module_paths[mod] if mod >= 0 else None,
            function=self.function_names[func] if func >= 0 else None,
            offset=int(self.offset[i]),
            file=self.file_names[file] if file >= 0 else None,
            line=line if file >= 0 and line > 0 else None,
        )


class _ModuleState:
    """What the resolver knows about one module, loaded on first use."""

    def __init__(self, module: ModuleMap) -> None:
        self.module = module
        self.bias = np.uint64(module.bias % (1 << 64))
        self._loaded = False
        self._image: ElfImage | None = None
        self._lines: LineTable | None = None
        self.warning = ""

    def image(self) -> ElfImage | None:
        if not self._loaded:
            self._loaded = True
            found = module_image(self.module)
            self._image = found.image
            if found.file_problem:
                self.warning = f"{found.why()}: its addresses stay raw"
        return self._image

    def warnings(self) -> list[str]:
        """This module's problems so far: an unreadable file, broken DWARF."""
        out = [self.warning] if self.warning else []
        if self._lines is not None and self._lines.broken:
            out.append(f"{self.module.name}: {self._lines.warning}")
        return out

    def lines(self) -> LineTable | None:
        image = self.image()
        if image is None:
            return None
        if self._lines is None:
            self._lines = line_table_for(image)
        return self._lines


class Symbolizer:
    """Symbolizes run-time addresses of one process, given its modules."""

    def __init__(self, modules: Sequence[ModuleMap], *, lines: bool = True,
                 demangled: bool = True) -> None:
        """``lines=False`` skips DWARF line tables (faster for big libraries);
        ``demangled=False`` gives C++ and Rust function names as the symbol tables
        spell them (symbols/demangle.py)."""
        self.modules: tuple[ModuleMap, ...] = tuple(modules)
        self._want_lines = lines
        self.demangled = demangled
        self._states = [_ModuleState(m) for m in self.modules]
        # Partition of the address space: where modules overlap, the later start wins.
        bounds = np.unique(np.array(
            [m.start for m in self.modules] + [m.end for m in self.modules], dtype=np.uint64))
        owner = np.full(len(bounds), -1, dtype=np.int32)
        for i in sorted(range(len(self.modules)), key=lambda i: self.modules[i].start):
            m = self.modules[i]
            owner[(bounds >= np.uint64(m.start)) & (bounds < np.uint64(m.end))] = i
        self._bounds = bounds
        self._owner = owner

    @property
    def warnings(self) -> list[str]:
        """Problems met so far (unreadable files, broken DWARF), one line each."""
        return [w for state in self._states for w in state.warnings()]

    def module_indices(self, addresses: np.ndarray) -> np.ndarray:
        """Index into :attr:`modules` of each address's module, -1 if in none."""
        a = np.asarray(addresses, dtype=np.uint64)
        if len(self._bounds) == 0:
            return np.full(a.shape, -1, dtype=np.int32)
        k = np.searchsorted(self._bounds, a, side="right").astype(np.int64) - 1
        return np.where(k >= 0, self._owner[np.maximum(k, 0)], np.int32(-1)).astype(np.int32)

    def resolve(self, addresses: np.ndarray) -> ResolvedArrays:
        """Symbolize an array of run-time addresses (any integer dtype, flattened).

        The work is done once per distinct address, in address order (traces repeat
        addresses heavily, and sorted queries make ``searchsorted`` cache friendly).
        """
        a = np.ascontiguousarray(addresses, dtype=np.uint64).ravel()
        u, inverse = np.unique(a, return_inverse=True)
        module = self.module_indices(u)
        vaddr = u.copy()
        function = np.full(len(u), -1, dtype=np.int32)
        offset = np.zeros(len(u), dtype=np.uint64)
        file = np.full(len(u), -1, dtype=np.int32)
        line = np.zeros(len(u), dtype=np.int32)
        names: list[str] = []
        files: list[str] = []
        for m in np.unique(module).tolist():
            if m < 0:
                continue
            idx = np.flatnonzero(module == m)
            state = self._states[m]
            v = u[idx] - state.bias
            vaddr[idx] = v
            image = state.image()
            if image is None:
                continue
            local, off = image.lookup_functions(v)
            function[idx] = _remap(local, image.names, names,
                                   demangle if self.demangled else None)
            offset[idx] = off
            table = state.lines() if self._want_lines else None
            if table is not None and len(table.address):
                lfile, lline = table.lookup_lines(v)
                file[idx] = _remap(lfile, table.files, files)
                line[idx] = lline
        return ResolvedArrays(
            address=a, module=module[inverse], vaddr=vaddr[inverse],
            function=function[inverse], offset=offset[inverse], file=file[inverse],
            line=line[inverse], module_paths=tuple(m.path for m in self.modules),
            function_names=tuple(names), file_names=tuple(files),
        )

    def describe(self, address: int) -> Location:
        """The :class:`Location` of one address."""
        return self.resolve(np.array([address], dtype=np.uint64)).location(0)

    def symbol_address(self, module: str | None, name: str) -> int | None:
        """Run-time address of function ``name`` (vaddr + bias), or None if not found.

        ``module`` is a module path or base name; None searches every module in
        order (the main executable is usually first: the lowest-mapped file).
        """
        for state in self._states:
            mod = state.module
            if module is not None and module not in (mod.path, mod.name):
                continue
            image = state.image()
            vaddr = image.symbol_address(name) if image is not None else None
            if vaddr is not None:
                return (vaddr + mod.bias) % (1 << 64)
        return None


def _remap(local: np.ndarray, table: list[str], out: list[str],
           spell: Callable[[str], str] | None = None) -> np.ndarray:
    """Local string indices (-1 = none) -> indices into ``out``, appending what is used
    (each through ``spell`` when given)."""
    known = local >= 0
    used_mask = np.zeros(len(table), dtype=bool)
    used_mask[local[known]] = True
    used = np.flatnonzero(used_mask)
    renumber = np.full(len(table) + 1, -1, dtype=np.int32)   # the extra slot maps -1
    renumber[used] = np.arange(len(out), len(out) + len(used), dtype=np.int32)
    out.extend(table[j] if spell is None else spell(table[j]) for j in used.tolist())
    return renumber[np.where(known, local, len(table))]
