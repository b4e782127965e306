"""The payload of a BLOCKS record (docs/trace-format.md): rows of the block table and
the layout of a row, as (name, format, offset) fields a reader checks before it builds a
numpy dtype from them (plain numbers and bytes only, never objects)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .format import Malformed, Packer, Unpacker

# A field format of a block table: optional subarray shape, byte order, kind, size.
# Only plain numbers, bools and fixed-size bytes: never objects.
_FIELD_FORMAT = re.compile(r"(\((\d{1,4},){0,2}\d{0,4}\))?[<>|=]?[biufcSV?]\d{0,5}")


def dtype_fields(dtype: np.dtype) -> list[tuple[str, str, int]]:
    """A block-table dtype as (name, format, offset) fields; a plain dtype is one field
    named ""."""
    if dtype.names is None:
        return [("", dtype.str, 0)]
    out = []
    for name in dtype.names:
        sub, offset = dtype.fields[name][:2]  # type: ignore[index]
        fmt = sub.str if sub.subdtype is None else f"{sub.subdtype[1]}{sub.subdtype[0].str}"
        out.append((name, fmt.replace(" ", ""), int(offset)))
    return out


def dtype_from_fields(fields: list[tuple[str, str, int]], itemsize: int) -> np.dtype:
    """The inverse of :func:`dtype_fields`; raises :class:`Malformed` for anything but
    plain numeric and bytes fields inside ``itemsize``."""
    for _, fmt, _ in fields:
        if not _FIELD_FORMAT.fullmatch(fmt):
            raise Malformed(f"block table field format {fmt!r} is not allowed")
    try:
        if len(fields) == 1 and fields[0][0] == "":
            dtype = np.dtype(fields[0][1])
        else:
            dtype = np.dtype({"names": [f[0] for f in fields], "formats": [f[1] for f in fields],
                              "offsets": [f[2] for f in fields], "itemsize": itemsize})
    except (TypeError, ValueError, OverflowError) as err:
        raise Malformed(f"bad block table layout: {err}") from None
    if dtype.itemsize != itemsize or dtype.hasobject or itemsize < 1:
        raise Malformed("bad block table layout")
    return dtype


@dataclass(frozen=True, slots=True)
class BlocksHead:
    """The fixed part of a BLOCKS record: rows ``first_id ..`` of the block table, then
    the zstd frame of ``count * row_size`` bytes."""

    first_id: int
    count: int
    row_size: int
    fields: tuple[tuple[str, str, int], ...]

    def encode(self) -> bytes:
        p = Packer().pack("QQII", self.first_id, self.count, self.row_size, len(self.fields))
        for name, fmt, offset in self.fields:
            p.text(name).text(fmt).pack("I", offset)
        return p.done()

    @classmethod
    def decode(cls, data: bytes | memoryview) -> tuple[BlocksHead, memoryview]:
        u = Unpacker(data)
        first, count, row_size, n = u.unpack("QQII")
        if n > len(u.rest()) // 12:
            raise Malformed("more fields than the record holds")
        fields = tuple((u.text(), u.text(), u.one("I")) for _ in range(n))
        return cls(first, count, row_size, fields), u.rest()
