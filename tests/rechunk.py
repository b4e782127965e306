"""A recorded trace file rewritten with its chunks cut small: the same records, the same
branches, many more chunk edges (for readers that go chunk by chunk: stream.py, tail.py,
the streaming history and crash report)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zstandard

from branchtrace.store import RECORD_DTYPES, Encoding
from branchtrace.tracefile.chunkbody import NARROW
from branchtrace.tracefile.format import (
    CHUNK_HEAD,
    FRAME,
    PREAMBLE,
    SYNC,
    ChunkHead,
    FileHeader,
    RecordType,
    frame_crc,
)


def _frame(rtype: int, payload: bytes, flags: int = 0) -> bytes:
    head = FRAME.pack(SYNC, rtype, flags, len(payload), 0)
    return FRAME.pack(SYNC, rtype, flags, len(payload), frame_crc(head, payload)) + payload


def rechunk(src: Path, dst: Path, size: int) -> int:
    """Copy ``src`` to ``dst`` with every chunk cut into chunks of ``size`` records;
    the number of chunks written. Chunks of 16-bit ids (chunkbody.NARROW) stay so."""
    data = src.read_bytes()
    out = [data[:PREAMBLE.size]]
    pos, dtype, written = PREAMBLE.size, None, 0
    while pos < len(data):
        _, rtype, flags, length, _ = FRAME.unpack_from(data, pos)
        payload = data[pos + FRAME.size:pos + FRAME.size + length]
        if rtype == RecordType.HEADER:
            dtype = RECORD_DTYPES[Encoding(FileHeader.decode(payload).encoding)]
        if rtype == RecordType.CHUNK:
            assert dtype is not None
            head = ChunkHead.decode(payload)
            stored = np.dtype("<u2") if flags & NARROW else dtype
            raw = zstandard.ZstdDecompressor().decompress(
                payload[CHUNK_HEAD.size:], max_output_size=head.count * stored.itemsize)
            records = np.frombuffer(raw, stored)
            for lo in range(0, len(records), size):
                part = records[lo:lo + size]
                new = ChunkHead(head.tid, len(part), head.first_index + lo, head.first_ns,
                                head.last_ns)
                body = zstandard.ZstdCompressor().compress(part.tobytes())
                out.append(_frame(RecordType.CHUNK, new.encode() + body, flags))
                written += 1
        else:
            out.append(data[pos:pos + FRAME.size + length])
        pos += FRAME.size + length
    dst.write_bytes(b"".join(out))
    return written
