"""A CHUNK record's body as stored: the zstd frame of its raw records, at their full
width or, for block ids, narrowed to 16 bits.

A program with fewer than 65536 distinct blocks (bzip2, gzip, sqlite3's inner loops) has
only ids below 65536: the writer stores each such chunk as 16-bit ids and says so in the
frame's flags (:data:`NARROW`, format version 2). zstd then has half the bytes to
compress: on bzip2's ids at level 2, 16% faster per id and a file 22% smaller (ratio 27
instead of 21), and a stream recording's compression is what bounds it on a machine
with one core to spare (docs/benchmarks.md). Readers widen the ids back as they
decompress (:func:`open_records`), so everything past this module sees 32-bit ids.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import numpy as np
import zstandard

from .format import ChunkHead, RecordType, frame

#: CHUNK frame flag: the zstd frame holds the block ids as little-endian uint16.
NARROW = 1

_IDS = np.dtype("<u4")
_NARROW_IDS = np.dtype("<u2")
#: ids widened per read (a scratch buffer of twice this many bytes)
_STEP = 1 << 16


def narrowed(records: np.ndarray) -> np.ndarray | None:
    """``records`` as 16-bit ids, when they are block ids that all fit; else None."""
    if records.dtype != _IDS or not len(records) or int(records.max()) >= 1 << 16:
        return None
    return records.astype(_NARROW_IDS)


def stored_size(count: int, record_size: int, flags: int) -> int:
    """Bytes the zstd frame of a chunk of ``count`` records holds."""
    return count * 2 if flags & NARROW else count * record_size


def valid_flags(flags: int, record_size: int) -> bool:
    """Whether a CHUNK record's flags make sense for records of ``record_size`` bytes
    (only block ids, 4 bytes, are ever narrowed; unknown bits are refused)."""
    return flags == 0 or (flags == NARROW and record_size == _IDS.itemsize)


class Readable(Protocol):
    def readinto(self, view: Any) -> int: ...


@contextmanager
def open_records(dctx: zstandard.ZstdDecompressor, body: bytes | memoryview,
                 narrow: bool) -> Iterator[Readable]:
    """A reader of a chunk body's records at their full width: its ``readinto`` behaves
    like zstd's stream reader on the raw records (0 at the end of the frame), widening
    narrowed ids on the way. zstd errors pass through."""
    with dctx.stream_reader(body, read_across_frames=False) as reader:
        yield _Widening(reader) if narrow else reader


def read_full(reader: Readable, view: Any) -> bool:
    """Fill ``view`` from ``reader``; False when the frame ends first."""
    got, size = 0, len(view)
    while got < size:
        n = reader.readinto(view[got:])
        if not n:
            return False
        got += n
    return True


class _Widening:
    """``readinto`` of 32-bit ids from a reader of 16-bit ones."""

    def __init__(self, reader: Readable) -> None:
        self._reader = reader
        self._scratch: np.ndarray | None = None
        self._odd = b""   # bytes of a wide id not yet handed out (a read that split one)

    def readinto(self, view: Any) -> int:
        """Up to ``len(view)`` bytes of 32-bit ids; 0 at the end."""
        target = memoryview(view).cast("B")
        if self._odd:
            n = min(len(self._odd), len(target))
            target[:n] = self._odd[:n]
            self._odd = self._odd[n:]
            return n
        want = max(1, min(_STEP, len(target) // 4))
        scratch = self._scratch
        if scratch is None or len(scratch) < want:
            scratch = self._scratch = np.empty(max(want, 256), _NARROW_IDS)
        raw = scratch.view(np.uint8).data[:want * 2]
        got = 0
        while got < len(raw):
            k = self._reader.readinto(raw[got:])
            if not k:
                break
            got += k
        if got % 2:
            raise zstandard.ZstdError("a narrowed chunk ends inside an id")
        wide = scratch[:got // 2].astype(_IDS).view(np.uint8)
        n = min(len(wide), len(target))
        target[:n] = wide[:n].data
        if n < len(wide):
            self._odd = wide[n:].tobytes()
        return n


def pieces(prefix: np.ndarray | None, records: np.ndarray, step: int,
            end: int) -> Iterator[np.ndarray]:
    """Rows [0, end) of ``prefix`` then ``records``, ``step`` at a time, without copying
    the two into one array: only the piece that spans both is put together."""
    p = 0 if prefix is None else len(prefix)
    start = 0
    if prefix is not None and p and end > 0:
        n = min(step, end)
        yield prefix[:n] if n <= p else np.concatenate((prefix, records[:n - p]))
        start = n
    for s in range(start, end, step):
        yield records[s - p:min(s + step, end) - p]


def chunk_record(compressor: zstandard.ZstdCompressor, head: ChunkHead,
                  piece: np.ndarray) -> bytes:
    """The CHUNK record of ``piece``: block ids that all fit in 16 bits are stored so
    (chunkbody.py), anything else as it is."""
    narrow = narrowed(piece)
    data = piece if narrow is None else narrow
    return frame(RecordType.CHUNK, head.encode() + compressor.compress(
        data.view(np.uint8).data), flags=0 if narrow is None else NARROW)
