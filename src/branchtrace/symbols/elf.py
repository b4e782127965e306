"""ELF images: build id, load segments, function symbols and raw bytes of one file.

An :class:`ElfImage` is loaded once per file (see :func:`load_elf`, cached by path and
file identity) and reads its symbol tables only when first asked. When the file has
no ``.symtab`` (or no DWARF), a separate debug file is looked for by build id under
:data:`DEBUG_DIRS`, then by ``.gnu_debuglink``; a MiniDebugInfo section
(``.gnu_debugdata``, an xz-compressed ELF) gives symbols as a last resort.

All addresses here are *file* (ELF virtual) addresses; the resolver adds the bias.
"""

from __future__ import annotations

import io
import lzma
import os
import stat
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from .plt import plt_symbols
from .symtab import (
    BINDING_GLOBAL,
    BINDING_LOCAL,
    BINDING_WEAK,
    FunctionTable,
    RawSymbol,
)

#: Roots searched for separate debug files (``<root>/.build-id/xx/rest.debug``).
DEBUG_DIRS: tuple[str, ...] = ("/usr/lib/debug",)

#: (path, st_dev, st_ino, st_size, st_mtime_ns): a file as it is now on disk.
FileKey = tuple[str, int, int, int, int]

_PF_X = 1
_SHF_EXECINSTR = 0x4
_SHN_LORESERVE = 0xFF00
_STT_NOTYPE, _STT_FUNC, _STT_GNU_IFUNC = 0, 2, 10
_BINDINGS = {0: BINDING_LOCAL, 1: BINDING_GLOBAL, 2: BINDING_WEAK, 10: BINDING_GLOBAL}


@dataclass(frozen=True, slots=True)
class LoadSegment:
    """One ``PT_LOAD`` program header."""

    vaddr: int
    memsz: int
    offset: int
    filesz: int
    flags: int

    @property
    def executable(self) -> bool:
        return bool(self.flags & _PF_X)


def _sym_dtype(elfclass: int, little: bool) -> np.dtype[Any]:
    e = "<" if little else ">"
    if elfclass == 64:
        fields = [("name", e + "u4"), ("info", "u1"), ("other", "u1"),
                  ("shndx", e + "u2"), ("value", e + "u8"), ("size", e + "u8")]
    else:
        fields = [("name", e + "u4"), ("value", e + "u4"), ("size", e + "u4"),
                  ("info", "u1"), ("other", "u1"), ("shndx", e + "u2")]
    return np.dtype(fields)


def _c_string(table: bytes, offset: int) -> str:
    end = table.find(b"\0", offset)
    return table[offset:end if end >= 0 else len(table)].decode("utf-8", "replace")


def _read_symbols(elf: Any) -> list[RawSymbol]:
    """Function symbols and code labels of every symbol table of ``elf``."""
    sections = list(elf.iter_sections())
    exec_flags = [bool(s["sh_flags"] & _SHF_EXECINSTR) for s in sections]
    limits = [int(s["sh_addr"]) + int(s["sh_size"]) for s in sections]
    dtype = _sym_dtype(elf.elfclass, elf.little_endian)
    out: list[RawSymbol] = []
    for sec in sections:
        if sec["sh_type"] not in ("SHT_SYMTAB", "SHT_DYNSYM"):
            continue
        data = sec.data()
        link = int(sec["sh_link"])
        if link >= len(sections):
            continue
        strtab = sections[link].data()
        syms = np.frombuffer(data[: len(data) - len(data) % dtype.itemsize], dtype=dtype)
        kind = syms["info"] & 0xF
        shndx = syms["shndx"].astype(np.int64)
        ok = (shndx > 0) & (shndx < min(_SHN_LORESERVE, len(sections)))
        typed = (kind == _STT_FUNC) | (kind == _STT_GNU_IFUNC)
        execs = np.array(exec_flags + [False], dtype=bool)[np.where(ok, shndx, len(sections))]
        keep = ok & (typed | ((kind == _STT_NOTYPE) & execs)) & (syms["name"] > 0)
        for rec in syms[keep].tolist():
            name = _c_string(strtab, rec[0])
            if name.startswith((".L", "$")):
                continue
            if elf.elfclass == 64:
                _, info, _, ndx, value, size = rec
            else:
                _, value, size, info, _, ndx = rec
            out.append(RawSymbol(
                name=name, start=value, size=size,
                sized=(info & 0xF) in (_STT_FUNC, _STT_GNU_IFUNC) and size > 0,
                limit=limits[ndx], binding=_BINDINGS.get(info >> 4, BINDING_LOCAL),
            ))
    return out


_DF_1_PIE = 0x08000000


def _is_pie(elf: Any) -> bool:
    """Whether the dynamic section's DT_FLAGS_1 has DF_1_PIE (set by the linker for
    position-independent executables, never for libraries)."""
    try:
        for seg in elf.iter_segments():
            if seg["p_type"] == "PT_DYNAMIC":
                return any(t.entry.d_tag == "DT_FLAGS_1" and t.entry.d_val & _DF_1_PIE
                           for t in seg.iter_tags())
    except Exception:  # noqa: BLE001 - a damaged dynamic section: not known as a program
        return False
    return False


def _build_id_of(elf: Any) -> str:
    """The GNU build id of ``elf`` as lower-case hex, "" if it has none."""
    notes = [s for s in elf.iter_sections() if s["sh_type"] == "SHT_NOTE"]
    if not notes:
        notes = [p for p in elf.iter_segments() if p["p_type"] == "PT_NOTE"]
    for holder in notes:
        for note in holder.iter_notes():
            if note["n_type"] == "NT_GNU_BUILD_ID":
                return str(note["n_desc"])
    return ""


def _open_bytes(data: bytes) -> Any:
    from elftools.elf.elffile import ELFFile  # here: pyelftools costs ~40 ms to import

    return ELFFile(io.BytesIO(data))


def _has_section(elf: Any, name: str) -> bool:
    sec = elf.get_section_by_name(name)
    return sec is not None and sec["sh_type"] != "SHT_NOBITS"


class ElfImage:
    """One ELF file, read once; symbol tables and debug files are loaded on first use."""

    def __init__(self, data: bytes, path: str, key: FileKey | None = None) -> None:
        """Parse the headers of ``data`` (raises pyelftools' ``ELFError`` if not ELF)."""
        self.path = path
        self.key = key
        self._data = data
        self._elf = _open_bytes(data)
        header = self._elf.header
        self.elf_type: str = str(header["e_type"])
        self.entry: int = int(header["e_entry"])
        self.segments: tuple[LoadSegment, ...] = tuple(
            LoadSegment(int(p["p_vaddr"]), int(p["p_memsz"]), int(p["p_offset"]),
                        int(p["p_filesz"]), int(p["p_flags"]))
            for p in self._elf.iter_segments() if p["p_type"] == "PT_LOAD"
        )
        self.build_id: str = _build_id_of(self._elf)
        #: a program (ET_EXEC, or a PIE: DF_1_PIE), not a library (libc names an
        #: interpreter too: it can be run to print its version)
        self.is_program: bool = self.elf_type == "ET_EXEC" or _is_pie(self._elf)
        #: (file address, size) of .eh_frame_hdr (the PT_GNU_EH_FRAME segment), if any
        self.eh_frame_hdr: tuple[int, int] | None = next(
            ((int(p["p_vaddr"]), int(p["p_memsz"])) for p in self._elf.iter_segments()
             if p["p_type"] == "PT_GNU_EH_FRAME"), None)
        self._lock = threading.Lock()
        self._functions: FunctionTable | None = None
        self._debug: Any = None
        self._debug_searched = False
        #: The separate debug file in use, if one was found.
        self.debug_path: str | None = None

    @classmethod
    def from_bytes(cls, data: bytes, name: str) -> ElfImage:
        """An image of bytes that are not a file on disk (the vDSO, for one)."""
        return cls(data, name)

    # -- addresses --------------------------------------------------------------------

    def load_bias(self, map_start: int, map_offset: int) -> int | None:
        """The bias implied by a mapping of file offset ``map_offset`` at ``map_start``.

        None when no ``PT_LOAD`` segment holds that offset.
        """
        for seg in self.segments:
            if (seg.offset & ~0xFFF) <= map_offset < seg.offset + max(seg.filesz, 1):
                return map_start - map_offset - (seg.vaddr - seg.offset)
        return None

    def executable_ranges(self) -> list[tuple[int, int]]:
        """``[start, end)`` file addresses of the executable segments."""
        return [(s.vaddr, s.vaddr + s.memsz) for s in self.segments if s.executable]

    def read_vaddr(self, vaddr: int, n: int) -> bytes:
        """Up to ``n`` bytes of the file's image at ``vaddr`` (fewer at a segment end).

        Bytes past the file part of a segment (``.bss``) read as zeros; an address in
        no segment gives ``b""``.
        """
        for seg in self.segments:
            if seg.vaddr <= vaddr < seg.vaddr + seg.memsz:
                n = max(0, min(n, seg.vaddr + seg.memsz - vaddr))
                rel = vaddr - seg.vaddr
                in_file = max(0, min(n, seg.filesz - rel))
                start = seg.offset + rel
                return self._data[start:start + in_file] + bytes(n - in_file)
        return b""

    # -- symbols and debug information -------------------------------------------------

    def _debug_elf(self) -> Any:
        """The separate debug file (an ``ELFFile``), or None; searched once."""
        with self._lock:
            if not self._debug_searched:
                self._debug_searched = True
                for candidate in self._debug_candidates():
                    found = _load_debug_file(candidate, self.build_id)
                    if found is not None:
                        self._debug, self.debug_path = found, candidate
                        break
            return self._debug

    def _debug_candidates(self) -> list[str]:
        out: list[str] = []
        if len(self.build_id) > 2:
            out += [os.path.join(root, ".build-id", self.build_id[:2], self.build_id[2:] + ".debug")
                    for root in DEBUG_DIRS]
        link = self._elf.get_section_by_name(".gnu_debuglink")
        if link is not None and self.key is not None:
            name = _c_string(link.data(), 0)
            here = os.path.dirname(os.path.abspath(self.path))
            out += [os.path.join(here, name), os.path.join(here, ".debug", name)]
            out += [os.path.join(root + here, name) for root in DEBUG_DIRS]
        return [p for p in out if os.path.abspath(p) != os.path.abspath(self.path)]

    def _mini_debuginfo(self) -> Any:
        sec = self._elf.get_section_by_name(".gnu_debugdata")
        if sec is None:
            return None
        try:
            return _open_bytes(lzma.decompress(sec.data()))
        except (lzma.LZMAError, ValueError, OSError):
            return None

    def dwarf_elf(self) -> Any:
        """The ``ELFFile`` that carries this file's DWARF (itself or its debug file)."""
        if _has_section(self._elf, ".debug_line") or _has_section(self._elf, ".debug_info"):
            return self._elf
        debug = self._debug_elf()
        if debug is not None and _has_section(debug, ".debug_line"):
            return debug
        return None

    @property
    def functions(self) -> FunctionTable:
        """The function table, built on first use from every symbol table available."""
        table = self._functions
        if table is None:
            sources = [self._elf]
            if not _has_section(self._elf, ".symtab"):
                extra = self._debug_elf()
                if extra is None or not _has_section(extra, ".symtab"):
                    extra = self._mini_debuginfo()
                if extra is not None:
                    sources.append(extra)
            symbols: list[RawSymbol] = []
            for elf in sources:
                symbols += _read_symbols(elf)
            symbols += plt_symbols(self._elf, symbols)
            table = FunctionTable(symbols)
            self._functions = table
        return table

    @property
    def names(self) -> list[str]:
        """Function names; :meth:`lookup_functions` returns indices into this list."""
        return self.functions.names

    def lookup_functions(self, vaddrs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(name index or -1, offset from the function start)`` for each file address."""
        return self.functions.lookup(vaddrs)

    def symbol_address(self, name: str) -> int | None:
        """The file address of the function ``name``, or None if no table defines it."""
        return self.functions.address_of(name)


def read_regular(path: str) -> bytes:
    """The bytes of the regular file at ``path``. A trace names the files to read: a
    FIFO or a device there (a hostile or odd trace) raises OSError instead of blocking
    or reading without end (O_NONBLOCK: opening a FIFO does not wait for a writer)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path}: not a regular file")
        return f.read()


def _load_debug_file(path: str, build_id: str) -> Any:
    """An ``ELFFile`` for a separate debug file if it exists, parses and matches."""
    try:
        elf = _open_bytes(read_regular(path))
        if build_id and _build_id_of(elf) not in ("", build_id):
            return None
        return elf
    except Exception:  # noqa: BLE001 - a bad debug file is only a missed opportunity
        return None


_CACHE: dict[FileKey, ElfImage | None] = {}
_CACHE_LOCK = threading.Lock()


def file_key(path: str) -> FileKey | None:
    """The identity of the file now at ``path`` (None if it cannot be stat'ed)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def load_elf(path: str) -> ElfImage | None:
    """The cached :class:`ElfImage` of ``path``; None if unreadable or not ELF."""
    key = file_key(path)
    if key is None:
        return None
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
    image: ElfImage | None
    try:
        image = ElfImage(read_regular(path), path, key)
    except Exception:  # noqa: BLE001 - unreadable, not ELF or corrupt: no symbols
        image = None
    with _CACHE_LOCK:
        return _CACHE.setdefault(key, image)


def clear_elf_cache() -> None:
    """Forget every loaded image (tests, or a long-lived process that rebuilt files)."""
    with _CACHE_LOCK:
        _CACHE.clear()
