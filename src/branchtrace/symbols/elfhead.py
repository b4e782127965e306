"""What a module map needs from an ELF file, read fast: its ``PT_LOAD`` segments and its
GNU build id, from the ELF header, the program headers and the ``PT_NOTE`` segments
(a few ``pread`` calls, no section parsing). Taking a snapshot of a process's modules
(at attach, at exit, at every dlopen) costs ~0.1 ms per file this way instead of the
~30 ms a full parse takes; the full parse (:mod:`branchtrace.symbols.elf`) waits until
a report needs symbols.
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")      # Elf64_Ehdr
_PHDR = struct.Struct("<IIQQQQQQ")               # Elf64_Phdr
_NHDR = struct.Struct("<III")                    # Elf64_Nhdr
PT_LOAD, PT_NOTE = 1, 4
NT_GNU_BUILD_ID = 3
_MAX_PHDRS = 4096
_MAX_NOTES = 1 << 16                             # bytes of PT_NOTE segments read


@dataclass(frozen=True)
class Segment:
    offset: int
    vaddr: int
    filesz: int


@dataclass(frozen=True)
class ElfHead:
    segments: tuple[Segment, ...]    # the PT_LOAD segments
    build_id: str                    # lower-case hex; "" when no PT_NOTE holds one

    def load_bias(self, map_start: int, map_offset: int) -> int | None:
        """The bias implied by a mapping of file offset ``map_offset`` at ``map_start``
        (as :meth:`ElfImage.load_bias`); None when no ``PT_LOAD`` segment holds it."""
        for seg in self.segments:
            if (seg.offset & ~0xFFF) <= map_offset < seg.offset + max(seg.filesz, 1):
                return map_start - map_offset - (seg.vaddr - seg.offset)
        return None


def read_head(path: str) -> ElfHead | None:
    """The load segments and build id of the 64-bit little-endian ELF file at ``path``;
    None when it cannot be read, is not a regular file, or is not such an ELF file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        return _parse(fd, st.st_size)
    except (OSError, struct.error, ValueError):
        return None
    finally:
        os.close(fd)


def _parse(fd: int, size: int) -> ElfHead | None:
    head = os.pread(fd, _EHDR.size, 0)
    if len(head) < _EHDR.size:
        return None
    ident, _type, machine, _v, _entry, phoff, _sh, _flags, _eh, phentsize, phnum, *_ = \
        _EHDR.unpack(head)
    if ident[:4] != b"\x7fELF" or ident[4] != 2 or ident[5] != 1:
        return None                  # not ELF, not 64-bit, not little-endian
    if phentsize < _PHDR.size or phnum > _MAX_PHDRS or phoff + phnum * phentsize > size:
        return None
    table = os.pread(fd, phnum * phentsize, phoff)
    segments: list[Segment] = []
    notes: list[tuple[int, int]] = []
    for i in range(phnum):
        p_type, _pf, offset, vaddr, _pa, filesz, _memsz, _align = \
            _PHDR.unpack_from(table, i * phentsize)
        if p_type == PT_LOAD:
            segments.append(Segment(offset, vaddr, filesz))
        elif p_type == PT_NOTE and offset + filesz <= size:
            notes.append((offset, min(filesz, _MAX_NOTES)))
    build_id = ""
    for offset, length in notes:
        build_id = _build_id(os.pread(fd, length, offset))
        if build_id:
            break
    return ElfHead(tuple(segments), build_id)


def _build_id(data: bytes) -> str:
    """The GNU build id among the notes in ``data``, as hex; "" if none."""
    at = 0
    while at + _NHDR.size <= len(data):
        namesz, descsz, ntype = _NHDR.unpack_from(data, at)
        name_at = at + _NHDR.size
        desc_at = name_at + ((namesz + 3) & ~3)
        end = desc_at + ((descsz + 3) & ~3)
        if desc_at + descsz > len(data):
            return ""
        if ntype == NT_GNU_BUILD_ID and data[name_at:name_at + namesz].rstrip(b"\0") == b"GNU":
            return data[desc_at:desc_at + descsz].hex()
        at = end
    return ""
