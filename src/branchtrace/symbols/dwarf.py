"""DWARF line tables as sorted numpy arrays, looked up for whole arrays at once.

The rows of every line-number program (DWARF 2 to 5, decoded by
:mod:`branchtrace.symbols.lineprog`) become
three parallel arrays sorted by address: ``address``, ``file`` (an index into
:attr:`LineTable.files`, -1 for "no line here") and ``line``. The end of each
sequence is a row with file -1, so addresses past it map to nothing. The row for an
address is the last one at or below it; rows with line 0 are skipped (the row before
them in the same sequence goes on).

Broken or absent DWARF never raises: the table is empty and :attr:`LineTable.warning`
says why.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

import numpy as np

from .elf import ElfImage
from .lineprog import UnitHeader, iter_units


BROKEN = "broken DWARF line information"


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value) if value is not None else ""


def _attr_text(die: Any, name: str) -> str:
    attr = die.attributes.get(name)
    return _text(attr.value) if attr is not None else ""


class LineTable:
    """Address -> (source file, line) for one ELF file (file addresses)."""

    def __init__(
        self,
        address: np.ndarray,
        file: np.ndarray,
        line: np.ndarray,
        files: list[str],
        warning: str = "",
    ) -> None:
        self.address = np.asarray(address, dtype=np.uint64)
        self.file = np.asarray(file, dtype=np.int32)
        self.line = np.asarray(line, dtype=np.int32)
        #: Source file paths (full where the table gives directories).
        self.files = files
        #: Why the table is empty or partial ("" when all went well).
        self.warning = warning

    @classmethod
    def empty(cls, warning: str = "") -> LineTable:
        """A table with no rows."""
        return cls(np.zeros(0, np.uint64), np.zeros(0, np.int32), np.zeros(0, np.int32), [],
                   warning)

    def __len__(self) -> int:
        return int(np.count_nonzero(self.file >= 0))

    @property
    def broken(self) -> bool:
        """Whether some debug information was there but could not be decoded."""
        return self.warning.startswith(BROKEN)

    def lookup_lines(self, vaddrs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(file index or -1, line or 0)`` for each file address."""
        v = np.asarray(vaddrs, dtype=np.uint64)
        if len(self.address) == 0:
            return np.full(v.shape, -1, dtype=np.int32), np.zeros(v.shape, dtype=np.int32)
        k = np.searchsorted(self.address, v, side="right").astype(np.int64) - 1
        kk = np.maximum(k, 0)
        file = np.where(k >= 0, self.file[kk], np.int32(-1)).astype(np.int32)
        line = np.where(file >= 0, self.line[kk], np.int32(0)).astype(np.int32)
        return file, line


class _Builder:
    """Collects the rows of every sequence, then sorts them into a :class:`LineTable`."""

    def __init__(self, code_ranges: list[tuple[int, int]]) -> None:
        self.code_ranges = code_ranges
        self.files: list[str] = []
        self.file_index: dict[str, int] = {}
        self.addr: list[int] = []
        self.file: list[int] = []
        self.line: list[int] = []
        self.dropped = 0

    def intern(self, path: str) -> int:
        index = self.file_index.get(path)
        if index is None:
            index = self.file_index[path] = len(self.files)
            self.files.append(path)
        return index

    def in_code(self, address: int) -> bool:
        return any(lo <= address < hi for lo, hi in self.code_ranges)

    def add_sequence(self, rows: list[tuple[int, int, int]], end: int) -> None:
        """One sequence: ``(address, file index, line)`` rows and its end address.

        Sequences that start outside the executable segments (functions the linker
        dropped, left at address 0) or whose addresses go backwards or past their end
        (corrupt input) are discarded.
        """
        if not rows or not self.in_code(rows[0][0]) or end >= 1 << 64:
            self.dropped += 1
            return
        previous = rows[0][0]
        for address, _, _ in rows:
            if address < previous:
                break
            previous = address
        else:
            if previous <= end:
                self._add_rows(rows, end)
                return
        self.dropped += 1

    def _add_rows(self, rows: list[tuple[int, int, int]], end: int) -> None:
        last: tuple[int, int] | None = None
        for address, file, line in rows:
            if line <= 0 or file < 0:
                if last is None:   # nothing before it in this sequence: no line here
                    self.addr.append(address)
                    self.file.append(-1)
                    self.line.append(0)
                continue
            last = (file, line)
            self.addr.append(address)
            self.file.append(file)
            self.line.append(line)
        self.addr.append(end)
        self.file.append(-1)
        self.line.append(0)

    def build(self, warning: str) -> LineTable:
        address = np.array(self.addr, dtype=np.uint64)
        file = np.array(self.file, dtype=np.int32)
        line = np.array(self.line, dtype=np.int32)
        # By address; at one address a sequence end sorts before rows that start
        # there; otherwise the original order is kept (the last row at an address wins).
        order = np.lexsort((np.arange(len(address)), file >= 0, address))
        return LineTable(address[order], file[order], line[order], self.files, warning)


def _section_bytes(elf: Any, name: str) -> bytes:
    sec = elf.get_section_by_name(name)
    if sec is None or sec["sh_type"] == "SHT_NOBITS":
        return b""
    return bytes(sec.data())


def _comp_dirs(elf: Any) -> dict[int, str]:
    """``DW_AT_stmt_list`` offset -> ``DW_AT_comp_dir`` (DWARF 4 needs it for directory 0)."""
    out: dict[int, str] = {}
    dwarf = elf.get_dwarf_info()
    for cu in dwarf.iter_CUs():
        top = cu.get_top_DIE()
        stmt = top.attributes.get("DW_AT_stmt_list")
        if stmt is not None:
            out[int(stmt.value)] = _attr_text(top, "DW_AT_comp_dir")
    return out


def _file_paths(header: UnitHeader, comp_dir: str) -> list[str]:
    """Full paths of a unit's files, indexed by the file numbers its rows use."""
    dirs = header.directories
    if header.version >= 5:
        # Directory 0 is the compilation directory; file numbers start at 0.
        base = dirs[0] if dirs else ""
        resolved = [base] + [d if os.path.isabs(d) or not base else os.path.join(base, d)
                             for d in dirs[1:]]
        paths = []
        for name, index in header.files:
            directory = resolved[index] if 0 <= index < len(resolved) else ""
            paths.append(name if os.path.isabs(name) else os.path.join(directory, name))
        return paths
    # DWARF 2-4: directory 0 is the compilation directory (from .debug_info); file
    # numbers start at 1 (index 0 here is a placeholder).
    full_dirs = [comp_dir] + [d if os.path.isabs(d) or not comp_dir
                              else os.path.join(comp_dir, d) for d in dirs]
    paths = [""]
    for name, index in header.files:
        directory = full_dirs[index] if 0 <= index < len(full_dirs) else ""
        paths.append(name if os.path.isabs(name) else os.path.join(directory, name))
    return paths


def read_line_table(elf: Any, code_ranges: list[tuple[int, int]]) -> LineTable:
    """The line table of ``elf`` (a pyelftools ``ELFFile``, or None); never raises.

    ``code_ranges`` are the executable file-address ranges; sequences that start
    elsewhere (code the linker dropped) are left out.
    """
    if elf is None:
        return LineTable.empty("no debug information")
    builder = _Builder(code_ranges)
    problems: list[str] = []
    try:
        debug_line = _section_bytes(elf, ".debug_line")
        if not debug_line:
            return LineTable.empty("no .debug_line section")
        line_str = _section_bytes(elf, ".debug_line_str")
        debug_str = _section_bytes(elf, ".debug_str")
        comp_dirs: dict[int, str] | None = None
        for header, sequences in iter_units(debug_line, line_str, debug_str, problems):
            comp_dir = ""
            if header.version < 5:
                if comp_dirs is None:
                    try:
                        comp_dirs = _comp_dirs(elf)
                    # Only directory names are lost: a broken .debug_info is not fatal.
                    except Exception:  # noqa: BLE001
                        comp_dirs = {}
                comp_dir = comp_dirs.get(header.offset, "")
            paths = _file_paths(header, comp_dir)
            numbers = [builder.intern(os.path.normpath(p)) if p else -1 for p in paths]
            for rows, end in sequences:
                builder.add_sequence(
                    [(a, numbers[f] if 0 <= f < len(numbers) else -1, ln) for a, f, ln in rows],
                    end)
    # pyelftools reports a corrupt section table or compressed section with many
    # exception types; the decoder's own errors are collected per unit above.
    except Exception as err:  # noqa: BLE001
        problems.append(f"{type(err).__name__}: {err}")
    warning = ""
    if problems:
        warning = f"{BROKEN} ({len(problems)} problem(s)): {problems[0]}"
        if len(warning) > 200:
            warning = warning[:197] + "..."
    table = builder.build(warning)
    if not warning and len(table) == 0:
        table.warning = "no line information"
    return table


_TABLES: weakref.WeakKeyDictionary[ElfImage, LineTable] = weakref.WeakKeyDictionary()
_TABLES_LOCK = threading.Lock()


def line_table_for(image: ElfImage) -> LineTable:
    """The line table of an image (its own DWARF or its debug file's), cached."""
    with _TABLES_LOCK:
        table = _TABLES.get(image)
    if table is None:
        try:
            elf = image.dwarf_elf()
        except Exception as err:  # noqa: BLE001 - a broken section table is not fatal
            table = LineTable.empty(f"{BROKEN}: unreadable sections: {type(err).__name__}")
        else:
            table = read_line_table(elf, image.executable_ranges())
        with _TABLES_LOCK:
            table = _TABLES.setdefault(image, table)
    return table
