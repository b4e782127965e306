"""A decoder for DWARF line-number programs (``.debug_line``, DWARF versions 2 to 5).

pyelftools decodes these too, but builds Python objects per row and needs a walk of
``.debug_info`` first; for glibc's debug file that takes over ten seconds. This
decoder reads ``.debug_line`` unit by unit as plain bytes and hands each finished
sequence as a list of tuples, several times faster. It only needs ``.debug_line_str`` and
``.debug_str`` for DWARF 5 file names.

Corrupt input raises :class:`LineProgramError` (a ``ValueError``) for the unit at
fault; :func:`iter_units` goes on with the next unit when the unit length is sane.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

# DWARF 5 forms that may appear in directory and file entry formats.
_FORM_BLOCK, _FORM_DATA1, _FORM_DATA2, _FORM_DATA4, _FORM_DATA8 = 0x09, 0x0B, 0x05, 0x06, 0x07
_FORM_STRING, _FORM_SDATA, _FORM_STRP, _FORM_UDATA = 0x08, 0x0D, 0x0E, 0x0F
_FORM_DATA16, _FORM_LINE_STRP = 0x1E, 0x1F
_FORM_STRX = {0x1A: 0, 0x25: 1, 0x26: 2, 0x27: 3, 0x28: 4}   # strx / strx1..4: size
_LNCT_PATH, _LNCT_DIRECTORY_INDEX = 1, 2

#: (address, file number as in the program, line) rows of one sequence...
Rows = list[tuple[int, int, int]]
#: ...and the sequence: its rows and its end address.
Sequence = tuple[Rows, int]


class LineProgramError(ValueError):
    """A line-number program that cannot be decoded."""


@dataclass(slots=True)
class UnitHeader:
    """What a line-number program unit says about itself and its files."""

    offset: int
    version: int
    directories: list[str] = field(default_factory=list)
    files: list[tuple[str, int]] = field(default_factory=list)   # (name, directory index)


class _Reader:
    """Bounds-checked little-endian reads over ``data[pos:end]``."""

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, pos: int, end: int) -> None:
        self.data, self.pos, self.end = data, pos, end

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise LineProgramError(f"read past the end of the unit at {self.pos:#x}")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "little")

    def uleb(self) -> int:
        data, pos, end = self.data, self.pos, self.end
        result = shift = 0
        while True:
            if pos >= end:
                raise LineProgramError("truncated LEB128 number")
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                self.pos = pos
                return result

    def sleb(self) -> int:
        data, pos, end = self.data, self.pos, self.end
        result = shift = 0
        while True:
            if pos >= end:
                raise LineProgramError("truncated LEB128 number")
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                self.pos = pos
                return result - (1 << shift) if byte & 0x40 else result

    def cstring(self) -> str:
        stop = self.data.find(b"\0", self.pos, self.end)
        if stop < 0:
            raise LineProgramError("unterminated string")
        text = self.data[self.pos:stop].decode("utf-8", "replace")
        self.pos = stop + 1
        return text


def _table_string(table: bytes, offset: int) -> str:
    stop = table.find(b"\0", offset)
    if offset >= len(table) or stop < 0:
        raise LineProgramError(f"string offset {offset:#x} outside its section")
    return table[offset:stop].decode("utf-8", "replace")


def _form_value(r: _Reader, form: int, offset_size: int,
                line_str: bytes, debug_str: bytes) -> str | int | None:
    """One attribute value of a DWARF 5 entry (strings decoded, numbers as int)."""
    if form == _FORM_STRING:
        return r.cstring()
    if form == _FORM_LINE_STRP:
        return _table_string(line_str, r.uint(offset_size))
    if form == _FORM_STRP:
        return _table_string(debug_str, r.uint(offset_size))
    if form == _FORM_UDATA:
        return r.uleb()
    if form == _FORM_SDATA:
        return r.sleb()
    sizes = {_FORM_DATA1: 1, _FORM_DATA2: 2, _FORM_DATA4: 4, _FORM_DATA8: 8}
    if form in sizes:
        return r.uint(sizes[form])
    if form == _FORM_DATA16:
        r.take(16)
        return None
    if form == _FORM_BLOCK:
        r.take(r.uleb())
        return None
    if form in _FORM_STRX:   # needs .debug_str_offsets and the unit's base: not kept
        size = _FORM_STRX[form]
        r.uleb() if size == 0 else r.take(size)
        return "?"
    raise LineProgramError(f"unsupported form {form:#x} in a line table header")


def _entries(r: _Reader, offset_size: int, line_str: bytes,
             debug_str: bytes) -> list[tuple[str, int]]:
    formats = [(r.uleb(), r.uleb()) for _ in range(r.uint(1))]
    out: list[tuple[str, int]] = []
    for _ in range(r.uleb()):
        name, index = "", 0
        for content, form in formats:
            value = _form_value(r, form, offset_size, line_str, debug_str)
            if content == _LNCT_PATH and isinstance(value, str):
                name = value
            elif content == _LNCT_DIRECTORY_INDEX and isinstance(value, int):
                index = value
        out.append((name, index))
    return out


def _decode_unit(data: bytes, start: int, line_str: bytes,
                 debug_str: bytes) -> tuple[UnitHeader, list[Sequence], int]:
    """Decode the unit at ``start``: its header, its sequences, the next unit's offset."""
    r = _Reader(data, start, len(data))
    length, offset_size = r.uint(4), 4
    if length == 0xFFFFFFFF:
        length, offset_size = r.uint(8), 8
    elif length >= 0xFFFFFFF0:
        raise LineProgramError(f"reserved unit length {length:#x}")
    unit_end = r.pos + length
    if unit_end > len(data):
        raise LineProgramError(f"unit at {start:#x} runs past the end of .debug_line")
    r.end = unit_end
    version = r.uint(2)
    if not 2 <= version <= 5:
        raise LineProgramError(f"unsupported line table version {version} at {start:#x}")
    if version >= 5:
        r.uint(2)   # address size, segment selector size
    header_length = r.uint(offset_size)
    program_start = r.pos + header_length
    min_inst = r.uint(1)
    if version >= 4:
        r.uint(1)   # maximum operations per instruction (VLIW only)
    default_is_stmt = r.uint(1)
    del default_is_stmt
    line_base = int.from_bytes(r.take(1), "little", signed=True)
    line_range = r.uint(1)
    opcode_base = r.uint(1)
    if line_range == 0 or opcode_base == 0:
        raise LineProgramError(f"bad line table header at {start:#x}")
    arg_counts = list(r.take(opcode_base - 1))
    header = UnitHeader(offset=start, version=version)
    if version >= 5:
        header.directories = [n for n, _ in _entries(r, offset_size, line_str, debug_str)]
        header.files = _entries(r, offset_size, line_str, debug_str)
    else:
        while (name := r.cstring()) != "":
            header.directories.append(name)
        while (name := r.cstring()) != "":
            header.files.append((name, r.uleb()))
            r.uleb()
            r.uleb()
    if program_start > unit_end:
        raise LineProgramError(f"header of unit at {start:#x} is longer than the unit")
    r.pos = program_start
    sequences = _run(r, min_inst, line_base, line_range, opcode_base, arg_counts, header)
    return header, sequences, unit_end


def _run(r: _Reader, min_inst: int, line_base: int, line_range: int, opcode_base: int,
         arg_counts: list[int], header: UnitHeader) -> list[Sequence]:
    """The line-number state machine: the finished sequences of one unit."""
    data, end = r.data, r.end
    address, file, line = 0, 1, 1
    sequences: list[Sequence] = []
    rows: Rows = []
    append = rows.append
    const_add = ((255 - opcode_base) // line_range) * min_inst
    while r.pos < end:
        op = data[r.pos]
        r.pos += 1
        if op >= opcode_base:
            adjusted = op - opcode_base
            address += (adjusted // line_range) * min_inst
            line += line_base + adjusted % line_range
            append((address, file, line))
        elif op == 0:
            size = r.uleb()
            next_pos = r.pos + size
            sub = r.uint(1) if size else -1
            if sub == 1:
                sequences.append((rows, address))
                rows = []
                append = rows.append
                address, file, line = 0, 1, 1
            elif sub == 2:
                address = r.uint(size - 1)
            elif sub == 3:   # DW_LNE_define_file (DWARF <= 4)
                name = r.cstring()
                header.files.append((name, r.uleb()))
            r.pos = next_pos
        elif op == 1:
            append((address, file, line))
        elif op == 2:
            address += r.uleb() * min_inst
        elif op == 3:
            line += r.sleb()
        elif op == 4:
            file = r.uleb()
        elif op == 8:
            address += const_add
        elif op == 9:
            address += r.uint(2)
        elif op in (6, 7, 10, 11):
            pass
        else:   # set_column, set_isa and unknown opcodes: skip their arguments
            for _ in range(arg_counts[op - 1]):
                r.uleb()
    # Rows after the last end_sequence belong to no sequence: dropped.
    return sequences


def iter_units(debug_line: bytes, line_str: bytes, debug_str: bytes,
               errors: list[str]) -> Iterator[tuple[UnitHeader, list[Sequence]]]:
    """Decode every unit of ``.debug_line``: its header and its sequences.

    A unit that fails is reported in ``errors`` and skipped whole; decoding stops when
    a unit length cannot be trusted (the next unit's start is then unknown).
    """
    pos = 0
    while pos + 4 <= len(debug_line):
        try:
            header, sequences, pos = _decode_unit(debug_line, pos, line_str, debug_str)
        except LineProgramError as err:
            errors.append(str(err))
            length = int.from_bytes(debug_line[pos:pos + 4], "little")
            if length >= 0xFFFFFFF0 or pos + 4 + length > len(debug_line) or length == 0:
                return
            pos += 4 + length
            continue
        yield header, sequences
