"""Block ids stored as 16 bits (tracefile/chunkbody.py, format version 2): which chunks
the writer narrows, and that every reader (the whole-file loader, the piece-by-piece
stream, the edge counter, the tail) reads such a file exactly as it reads the same ids
stored at full width; a narrow flag where it cannot be is a damaged chunk."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import zstandard

from branchtrace.model import BranchKind
from branchtrace.tracefile import VERSION, open_trace, scan
from branchtrace.tracefile import chunkbody as chunkbody_module
from branchtrace.tracefile.chunkbody import (
    NARROW,
    narrowed,
    open_records,
    stored_size,
    valid_flags,
)
from branchtrace.tracefile.counts import count_thread
from branchtrace.tracefile.format import FRAME, PREAMBLE, RecordType
from branchtrace.tracefile.stream import ThreadStream, joined, read_chunk
from branchtrace.tracefile.tail import last_branches

from test_tracefile import blockid_file, make_table, records, written


def test_only_block_ids_that_all_fit_are_narrowed() -> None:
    ids = np.array([0, 1, 65535, 7], "<u4")
    got = narrowed(ids)
    assert got is not None and got.dtype == np.dtype("<u2") and list(got) == list(ids)
    assert narrowed(np.array([0, 65536], "<u4")) is None
    assert narrowed(np.zeros(0, "<u4")) is None
    assert narrowed(np.array([1, 2], "<u8")) is None     # not block ids
    assert stored_size(10, 4, NARROW) == 20 and stored_size(10, 4, 0) == 40
    assert valid_flags(0, 24) and valid_flags(NARROW, 4)
    assert not valid_flags(NARROW, 24) and not valid_flags(2, 4) and not valid_flags(3, 4)


@pytest.mark.parametrize("size", [1, 3, 4, 7, 4096, 1 << 20])
def test_records_reads_wide_bytes_whatever_the_read_size(size: int) -> None:
    ids = np.random.default_rng(size).integers(0, 65536, 70_001).astype("<u4")
    body = zstandard.ZstdCompressor().compress(ids.astype("<u2").tobytes())
    out, buf = bytearray(), bytearray(size)
    with open_records(zstandard.ZstdDecompressor(), body, True) as reader:
        while n := reader.readinto(memoryview(buf)):
            out += buf[:n]
    assert bytes(out) == ids.tobytes()


def _loop_table() -> np.ndarray:
    return make_table([(0x1000, 0x100c, 0x1010, BranchKind.COND),
                       (0x1010, 0x1018, 0x101c, BranchKind.CALL),
                       (0x2000, 0x2004, 0x2005, BranchKind.RETURN),
                       (0x101c, 0x1020, 0x1024, BranchKind.JUMP)])


def _chunk_flags(path: Path) -> list[int]:
    data = path.read_bytes()
    return [FRAME.unpack_from(data, o)[2] for o, t, _ in records(path) if t == RecordType.CHUNK]


def test_every_reader_reads_narrow_chunks_as_wide_ones(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    table = _loop_table()
    # thread 4242: small ids (every chunk narrowed); 4243: one chunk of three holds an id
    # past 65535 (a block the table does not have: no branch to or from it), so it is
    # stored wide between two narrow ones
    small = np.tile(np.array([0, 1, 2, 3], "<u4"), 30_001)
    mixed = np.tile(np.array([0, 1, 2, 3, 0, 1, 3], "<u4"), 9_000)
    mixed[len(mixed) // 2] = 70_000
    ids = {4242: small, 4243: mixed}
    narrow, wide = tmp_path / "narrow.btrace", tmp_path / "wide.btrace"
    blockid_file(narrow, table, ids)
    monkeypatch.setattr(chunkbody_module, "narrowed", lambda records: None)
    blockid_file(wide, table, ids)
    assert _chunk_flags(narrow) == [NARROW] * 4 + [0, NARROW]
    assert set(_chunk_flags(wide)) == {0}
    assert narrow.stat().st_size < wide.stat().st_size
    a, b = scan(narrow), scan(wide)
    dctx = zstandard.ZstdDecompressor()
    for tid, seq in ids.items():
        raw = np.concatenate([read_chunk(dctx, c, np.dtype("<u4")) for c in a.chunks[tid]])
        assert np.array_equal(raw, seq)
        assert np.array_equal(joined(ThreadStream(a, tid)), joined(ThreadStream(b, tid)))
        assert np.array_equal(last_branches(a, tid, 1000), last_branches(b, tid, 1000))
        ca, cb = count_thread(a, tid), count_thread(b, tid)
        assert ca.branches == cb.branches > 0 and np.array_equal(ca.edges, cb.edges)
    ta, tb = open_trace(narrow), open_trace(wide)
    for tid in ids:
        assert len(ta.branches(tid)) > 0
        assert np.array_equal(ta.branches(tid), tb.branches(tid))
    assert ta.gaps == tb.gaps


def _reflag(path: Path, flags: int) -> None:
    """Give the first CHUNK record ``flags``, its CRC made right (so only the flags are
    wrong)."""
    data = bytearray(path.read_bytes())
    offset, _, length = next(r for r in records(path) if r[1] == RecordType.CHUNK)
    struct.pack_into("<H", data, offset + 6, flags)
    crc = zlib.crc32(bytes(data[offset + FRAME.size:offset + FRAME.size + length]),
                     zlib.crc32(bytes(data[offset + 4:offset + 12])))
    struct.pack_into("<I", data, offset + 12, crc)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("flags", [2, NARROW | 2])
def test_a_chunk_with_unknown_flags_is_damaged(tmp_path: Path, flags: int) -> None:
    path = tmp_path / "b.btrace"
    blockid_file(path, _loop_table(), {4242: np.tile(np.array([0, 1, 2, 3], "<u4"), 3000)})
    _reflag(path, flags)
    tf = scan(path)
    assert len(tf.chunks[4242]) == 2
    assert any("damaged" in p for p in tf.problems)


def test_a_narrow_flag_on_fromto_records_is_damaged(tmp_path: Path) -> None:
    path = written(tmp_path)                 # FROMTO records: never narrowed
    assert set(_chunk_flags(path)) == {0}
    _reflag(path, NARROW)
    tf = scan(path)
    assert sum(len(cs) for cs in tf.chunks.values()) == 3
    assert any("damaged" in p for p in tf.problems)


def test_files_say_version_2(tmp_path: Path) -> None:
    path = written(tmp_path)
    assert PREAMBLE.unpack_from(path.read_bytes())[1] == VERSION == 2
