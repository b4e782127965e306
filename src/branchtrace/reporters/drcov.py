"""Basic-block coverage in DynamoRIO's drcov format, which Lighthouse, bncov and
Lightkeeper load.

The layout, as DynamoRIO 7.x's drcov writes it on Linux and those tools parse it::

    DRCOV VERSION: 2
    DRCOV FLAVOR: drcov
    Module Table: version 4, count 3
    Columns: id, containing_id, start, end, entry, offset, path
      0,   0, 0x0000555555554000, 0x0000555555559000, 0x0000555555555060, 0000000000000000, /a
    ...
    BB Table: 42 bbs
    <42 packed little-endian records {u32 start; u16 size; u16 mod_id}>

One module line per module of the trace: ``start`` is its lowest mapped address (the
base a disassembler loads it at, so a block's ``start`` field is its offset in the
image), ``containing_id`` is its own id and ``offset`` 0 (the whole file is one entry).
Module table version 4 (what DynamoRIO 7.x writes on Linux alongside drcov version 2)
rather than version 2 (whose checksum and timestamp columns are Windows-only): older
bncov releases take the module id from the second column, which version 2 fills with
the base address; current bncov and Lighthouse (module tables 2 to 5) read both. Paths are
written as they are, except that ``", "`` (the column separator) and line breaks are
replaced.

drcov has no hit counts: each executed block appears once. Blocks in no module are
left out (:func:`render` returns how many); blocks longer than 65535 bytes (the u16
size) are cut into pieces.
"""

from __future__ import annotations

import struct
from typing import IO

import numpy as np

from ..analysis.coverage import Coverage
from ..errors import TraceFormatError
from ..symbols.images import module_image

#: The packed block record: u32 offset from the module start, u16 size, u16 module id.
BB_DTYPE = np.dtype([("start", "<u4"), ("size", "<u2"), ("mod_id", "<u2")])
assert BB_DTYPE.itemsize == struct.calcsize("<IHH") == 8

COLUMNS = "id, containing_id, start, end, entry, offset, path"
_MAX_SIZE = 0xFFFF


def _clean_path(path: str) -> str:
    return path.replace(", ", ",_").replace("\n", " ").replace("\r", " ")


def _entry(cov: Coverage, index: int) -> int:
    module = cov.modules[index]
    image = module_image(module).image
    if image is None or not image.entry:
        return 0
    return (image.entry + module.bias) % (1 << 64)


def bb_table(cov: Coverage) -> np.ndarray:
    """The BB table records (:data:`BB_DTYPE`) of the blocks that lie in a module."""
    blocks = cov.blocks[cov.blocks["module"] >= 0]
    if len(cov.modules) > 0xFFFF:
        raise TraceFormatError("cannot write drcov: its module ids are 16 bits, and the "
                               f"trace has {len(cov.modules)} modules")
    bases = np.array([m.start for m in cov.modules], dtype=np.uint64)
    size = blocks["end"] - blocks["start"]
    pieces = ((size + np.uint64(_MAX_SIZE - 1)) // np.uint64(_MAX_SIZE)).astype(np.int64)
    row = np.repeat(np.arange(len(blocks)), pieces)
    # the k-th piece of a block starts k * 65535 bytes in
    first = np.cumsum(pieces) - pieces
    k = (np.arange(len(row)) - np.repeat(first, pieces)).astype(np.uint64)
    start = blocks["start"][row] + k * np.uint64(_MAX_SIZE)
    end = np.minimum(start + np.uint64(_MAX_SIZE), blocks["end"][row])
    module = blocks["module"][row]
    offset = start - bases[module]
    if len(offset) and int(offset.max()) > 0xFFFFFFFF:
        raise TraceFormatError("cannot write drcov: a block lies more than 4 GiB past its "
                               "module's start (drcov offsets are 32 bits)")
    out = np.zeros(len(row), dtype=BB_DTYPE)
    out["start"] = offset.astype(np.uint32)
    out["size"] = (end - start).astype(np.uint16)
    out["mod_id"] = module.astype(np.uint16)
    return out


def render(cov: Coverage, out: IO[bytes]) -> int:
    """Write the drcov file of ``cov`` to the binary stream ``out``.

    Returns how many executed blocks were left out because they lie in no module.
    """
    table = bb_table(cov)
    lines = ["DRCOV VERSION: 2", "DRCOV FLAVOR: drcov",
             f"Module Table: version 4, count {len(cov.modules)}", f"Columns: {COLUMNS}"]
    for i, m in enumerate(cov.modules):
        lines.append(f"{i:3d}, {i:3d}, 0x{m.start:016x}, 0x{m.end:016x}, "
                     f"0x{_entry(cov, i):016x}, {0:016x}, {_clean_path(m.path)}")
    lines.append(f"BB Table: {len(table)} bbs")
    out.write(("\n".join(lines) + "\n").encode("utf-8", "surrogateescape"))
    out.write(table.tobytes())
    return cov.unmapped_blocks
