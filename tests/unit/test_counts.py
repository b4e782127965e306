"""decode/pairs.py and tracefile/counts.py: the edge table of a file in one pass.

Expected values come from the written data (np.unique over the pairs, the by-hand
block-id rule of tests/damage.py), never from the counting code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from branchtrace.decode import jit
from branchtrace.model import BranchKind
from branchtrace.tracefile import open_trace, scan
from branchtrace.tracefile.counts import count_thread, edges_of
from branchtrace.tracefile.format import FRAME, RecordType
from branchtrace.decode.pairs import PairCounter
from damage import blockid_branches
from test_tracefile import blockid_file, make_table, records, written

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
COMPILED = [False] + ([True] if jit.enabled() else [])


def _pairs(seq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keys = (seq[:-1].astype(np.uint64) << np.uint64(32)) | seq[1:].astype(np.uint64)
    return np.unique(keys, return_counts=True)


@pytest.mark.parametrize("compiled", COMPILED)
def test_pairs_are_counted_across_pieces_and_not_across_cuts(compiled: bool) -> None:
    rng = np.random.default_rng(3)
    a = rng.integers(0, 5000, 300_000).astype(np.uint32)       # grows the table often
    b = rng.integers(0, 50, 1000).astype(np.uint32)
    pc = PairCounter(compiled)
    assert (pc.kernel is not None) == compiled
    for piece in np.array_split(a, 7):
        pc.feed(piece)
    pc.cut()
    pc.feed(b)
    first, second, counts = pc.result()
    keys = (first.astype(np.uint64) << np.uint64(32)) | second
    ka, ca = _pairs(a)
    kb, cb = _pairs(b)
    want_k, inverse = np.unique(np.concatenate([ka, kb]), return_inverse=True)
    want_c = np.bincount(inverse, weights=np.concatenate([ca, cb])).astype(np.uint64)
    assert np.array_equal(keys, want_k) and np.array_equal(counts, want_c)
    assert int(counts.sum()) == len(a) - 1 + len(b) - 1      # nothing across the cut


def _table() -> np.ndarray:
    return make_table([(0x1000, 0x100c, 0x1010, BranchKind.COND),
                       (0x1010, 0x1018, 0x101c, BranchKind.CALL),
                       (0x2000, 0x2004, 0x2005, BranchKind.RETURN),
                       (0x101c, 0x1020, 0x1024, BranchKind.JUMP)])


@pytest.mark.parametrize("compiled", COMPILED)
def test_block_id_file_counts_are_its_branches(tmp_path: Path, compiled: bool) -> None:
    table = _table()
    seqs = {4242: np.tile(np.array([0, 1, 2, 3], "<u4"), 2_501),
            4243: np.tile(np.array([0, 1, 2, 3, 0, 1, 3], "<u4"), 70)}
    path = tmp_path / "b.btrace"
    blockid_file(path, table, seqs)
    tf = scan(path)
    for tid, seq in seqs.items():
        got = count_thread(tf, tid, compiled)
        want = edges_of(blockid_branches(seq, table))
        assert got.branches == len(blockid_branches(seq, table)) and got.corrupt == 0
        assert np.array_equal(got.edges, want), tid


@pytest.mark.parametrize("compiled", COMPILED)
def test_a_corrupt_chunk_breaks_the_pairs_there(tmp_path: Path, compiled: bool) -> None:
    table = _table()
    seq = np.tile(np.array([0, 1, 2, 3], "<u4"), 3_000)
    path = tmp_path / "b.btrace"
    blockid_file(path, table, {4242: seq})
    offset, length = [(o, n) for o, t, n in records(path) if t == RecordType.CHUNK][1]
    data = bytearray(path.read_bytes())
    data[offset + FRAME.size + length // 2] ^= 0x40
    path.write_bytes(bytes(data))
    parts = np.array_split(seq, 3)
    want = edges_of(np.concatenate([blockid_branches(parts[0], table),
                                    blockid_branches(parts[2], table)]))
    got = count_thread(scan(path), 4242, compiled)
    # the damaged chunk fails its CRC: the scan drops it, a hole in the thread
    assert np.array_equal(got.edges, want) and got.branches == int(want["count"].sum())


def test_from_to_files_and_recorded_files_agree_with_the_whole_file_reader(tmp_path: Path) -> None:
    for path in (written(tmp_path), GOLDEN / "fib.btrace", GOLDEN / "fib-crash.btrace"):
        tf, trace = scan(path), open_trace(path)
        for tid, branches in trace.threads.items():
            got = count_thread(tf, tid)
            assert got.branches == len(branches)
            assert np.array_equal(got.edges, edges_of(branches)), (path, tid)
