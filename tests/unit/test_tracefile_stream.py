"""tracefile/stream.py: a file's branches piece by piece, in memory bounded by a chunk.

Expected values come from the data the tests wrote (and from the by-hand block-id rule
of tests/damage.py), never from the reader under test; the whole-file reader is the
second witness, on recorded files too."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np

from branchtrace.model import BRANCH_DTYPE, BranchKind, Gap
from branchtrace.store import FROMTO_DTYPE, Encoding, StoreMode
from branchtrace.tracefile import CORRUPT, TraceWriter, open_trace, scan
from branchtrace.tracefile.format import FRAME, EndInfo, FileHeader, RecordType, ThreadInfo
from branchtrace.tracefile.stream import Piece, ThreadStream, joined, pieces, thread_order

from damage import blockid_branches
from test_tracefile import (
    blockid_file,
    make_table,
    records,
    synthetic,
    written,
)

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def _gaps(items: list[Piece | Gap]) -> list[Gap]:
    return [g for g in items if isinstance(g, Gap)]


def test_fromto_pieces_are_the_written_branches_with_their_gaps(tmp_path: Path) -> None:
    path = written(tmp_path)
    full = synthetic()
    tf = scan(path)
    assert thread_order(tf) == [100, 101, 102]
    for tid in (100, 101, 102):
        items = list(ThreadStream(tf, tid))
        assert np.array_equal(joined(iter(items)), full.branches(tid)), tid
        assert sorted(_gaps(items), key=str) == sorted(
            (g for g in full.gaps if g.tid == tid), key=str)
        # pieces are in order and say where they start
        at = 0
        for p in items:
            if isinstance(p, Piece):
                assert p.index == at and p.tid == tid
                at += len(p.branches)
    assert len([p for p in pieces(tf) if isinstance(p, Piece)]) >= 4   # one per chunk


def test_block_ids_pair_across_chunk_edges(tmp_path: Path) -> None:
    table = make_table([(0x1000, 0x100c, 0x1010, BranchKind.COND),
                        (0x1010, 0x1018, 0x101c, BranchKind.CALL),
                        (0x2000, 0x2004, 0x2005, BranchKind.RETURN),
                        (0x101c, 0x1020, 0x1024, BranchKind.JUMP)])
    ids = {4242: np.tile(np.array([0, 1, 2, 3], "<u4"), 2_501),     # 3 chunks: edges cut
           4243: np.tile(np.array([0, 1, 2, 3, 0, 1, 3], "<u4"), 70)}  # pairs apart
    path = tmp_path / "b.btrace"
    blockid_file(path, table, ids)
    tf = scan(path)
    for tid, seq in ids.items():
        want = blockid_branches(seq, table)
        assert len(want) > 2
        assert np.array_equal(joined(ThreadStream(tf, tid)), want), tid
    items = list(ThreadStream(tf, 4243))
    assert _gaps(items) == [Gap(4243, 5, 9, "stalker lost them")]
    assert [len(p.branches) for p in items if isinstance(p, Piece)][0] == 5  # split at it


def test_a_corrupt_chunk_is_a_gap_and_breaks_no_pair(tmp_path: Path) -> None:
    table = make_table([(0x1000, 0x100c, 0x1010, BranchKind.COND),
                        (0x1010, 0x1018, 0x101c, BranchKind.CALL),
                        (0x2000, 0x2004, 0x2005, BranchKind.RETURN),
                        (0x101c, 0x1020, 0x1024, BranchKind.JUMP)])
    seq = np.tile(np.array([0, 1, 2, 3], "<u4"), 3_000)
    path = tmp_path / "b.btrace"
    blockid_file(path, table, {4242: seq})
    chunks = [(o, n) for o, t, n in records(path) if t == RecordType.CHUNK]
    assert len(chunks) == 3
    data = bytearray(path.read_bytes())
    offset, length = chunks[1]
    data[offset + FRAME.size + length // 2] ^= 0x40
    path.write_bytes(bytes(data))
    parts = np.array_split(seq, 3)
    first, third = blockid_branches(parts[0], table), blockid_branches(parts[2], table)
    items = list(ThreadStream(scan(path), 4242))
    assert np.array_equal(joined(iter(items)), np.concatenate([first, third]))
    assert _gaps(items) == [Gap(4242, len(first), len(parts[1]), CORRUPT)]
    whole = open_trace(path)
    assert np.array_equal(joined(iter(items)), whole.branches(4242))


def test_recorded_files_read_the_same_as_the_whole_file_reader() -> None:
    for name in ("fib.btrace", "fib-crash.btrace"):
        tf, trace = scan(GOLDEN / name), open_trace(GOLDEN / name)
        for tid in thread_order(tf):
            assert np.array_equal(joined(ThreadStream(tf, tid)), trace.branches(tid))


def _long_file(path: Path, chunks: int) -> None:
    """One thread of FROMTO records, ``chunks`` chunks of 64K records."""
    header = FileHeader(int(Encoding.FROMTO), int(StoreMode.STREAM), 24, 1 << 16, 1 << 16,
                        7, 10**18, "ptrace", "test", ("./prog",))
    w = TraceWriter.create(path, header)
    rows = np.zeros(1 << 16, FROMTO_DTYPE)
    rows["from_ip"] = np.arange(1 << 16) + 0x1000
    rows["to_ip"] = rows["from_ip"] + 7
    rows["kind"] = BranchKind.COND
    for k in range(chunks):
        w.write_chunk(7, rows, 10**18 + k, 10**18 + k + 1)
    w.write_thread(ThreadInfo(7, chunks << 16, chunks << 16, 0))
    w.finish(EndInfo(10**18 + chunks, 7, "exited", code=0))


def _peak_while_reading(path: Path) -> tuple[int, int]:
    tf = scan(path)
    tracemalloc.start()
    try:
        n = 0
        for p in pieces(tf):
            if isinstance(p, Piece):
                n += len(p.branches)
        return n, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_trace(tmp_path: Path) -> None:
    small, big = tmp_path / "small.btrace", tmp_path / "big.btrace"
    _long_file(small, 4)
    _long_file(big, 40)
    n_small, peak_small = _peak_while_reading(small)
    n_big, peak_big = _peak_while_reading(big)
    assert (n_small, n_big) == (4 << 16, 40 << 16)
    # ten times the branches (2.6M branches, 45 MB decoded): the same peak, give or take
    # allocator noise; one chunk is 1.5 MB raw + 1.1 MB decoded
    assert peak_big < peak_small * 1.5 + (1 << 20), (peak_small, peak_big)
    assert peak_big < 16 << 20
    assert BRANCH_DTYPE.itemsize * n_big > 10 * peak_big
