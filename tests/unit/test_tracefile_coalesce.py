"""A stream recording's writer joins what the consumer drains into whole file chunks
(TraceWriter(coalesce=True)): the same records, in fewer and fuller chunks, never past a
thread's later records of another kind, and nothing held back when the file ends."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from branchtrace.model import Gap
from branchtrace.store import Encoding, StoreMode
from branchtrace.tracefile import TraceWriter, scan
from branchtrace.tracefile.format import CHUNK_BYTES, FileHeader, RecordType
from branchtrace.tracefile.writer import CARRY_NS
from test_tracefile import records

T0 = 10**18
STEP = CHUNK_BYTES // 4                      # block ids in a whole file chunk


def _writer(path: Path, coalesce: bool) -> TraceWriter:
    header = FileHeader(int(Encoding.BLOCKID), int(StoreMode.STREAM), 4, 1 << 20, 1 << 16,
                        4242, T0, "stalker", "test", ("./prog",))
    return TraceWriter.create(path, header, coalesce=coalesce)


def _drains(seed: int) -> list[np.ndarray]:
    """What a consumer drains from a 16-chunk buffer: 1 to 6 chunks of 65536 at a time."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 5000, 65536 * int(k), dtype="<u4") for k in rng.integers(1, 7, 40)]


def _ids(path: Path, tid: int) -> tuple[np.ndarray, list[int]]:
    import zstandard

    from branchtrace.tracefile.stream import read_chunk

    chunks = scan(path).chunks[tid]
    ids = [read_chunk(zstandard.ZstdDecompressor(), c, np.dtype("<u4")) for c in chunks]
    return np.concatenate(ids), [c.head.count for c in chunks]


def test_drains_become_whole_chunks(tmp_path: Path) -> None:
    drains = _drains(1)
    for coalesce in (False, True):
        w = _writer(tmp_path / f"{coalesce}.btrace", coalesce)
        for k, d in enumerate(drains):
            w.write_chunk(7, d, T0 + k, T0 + k + 1)
        w.close()
    plain, plain_counts = _ids(tmp_path / "False.btrace", 7)
    joined, joined_counts = _ids(tmp_path / "True.btrace", 7)
    assert np.array_equal(joined, np.concatenate(drains))
    assert np.array_equal(plain, joined)
    assert all(n == STEP for n in joined_counts[:-1])
    assert len(joined_counts) < len(plain_counts)
    assert (tmp_path / "True.btrace").stat().st_size < (tmp_path / "False.btrace").stat().st_size


def test_a_thread_records_come_before_its_gap(tmp_path: Path) -> None:
    path = tmp_path / "g.btrace"
    w = _writer(path, coalesce=True)
    w.write_chunk(7, np.arange(1000, dtype="<u4"), T0, T0 + 1)       # held back
    w.write_gap(Gap(7, 1000, 5, "lost them"))
    w.write_chunk(7, np.arange(1000, 1500, dtype="<u4"), T0 + 2, T0 + 3)
    w.close()
    kinds = [t for _, t, _ in records(path) if t in (RecordType.CHUNK, RecordType.GAP)]
    assert kinds == [RecordType.CHUNK, RecordType.GAP, RecordType.CHUNK]
    ids, counts = _ids(path, 7)
    assert counts == [1000, 500] and np.array_equal(ids, np.arange(1500, dtype="<u4"))


def test_an_old_tail_is_not_held_longer(tmp_path: Path) -> None:
    path = tmp_path / "t.btrace"
    w = _writer(path, coalesce=True)
    w.write_chunk(7, np.arange(10, dtype="<u4"), T0, T0 + 1)
    w.write_chunk(7, np.arange(10, 20, dtype="<u4"), T0 + CARRY_NS, T0 + CARRY_NS + 1)
    assert len(scan(path).chunks[7]) == 1          # the 20 records went out together
    w.close()
    ids, counts = _ids(path, 7)
    assert counts == [20] and np.array_equal(ids, np.arange(20, dtype="<u4"))


def test_drains_of_any_size_keep_every_record_in_order(tmp_path: Path) -> None:
    """Drains that are no multiple of a chunk (a carried tail then fills the first
    piece of the next drain; a drain too small to fill it is carried whole)."""
    rng = np.random.default_rng(3)
    sizes = [int(n) for n in rng.integers(1, 3 * STEP, 30)] + [5, 7, STEP - 1, 1, STEP + 1]
    drains = [rng.integers(0, 5000, n, dtype="<u4") for n in sizes]
    path = tmp_path / "any.btrace"
    w = _writer(path, coalesce=True)
    for k, d in enumerate(drains):
        w.write_chunk(7, d, T0 + k, T0 + k + 1)
    w.close()
    ids, counts = _ids(path, 7)
    assert np.array_equal(ids, np.concatenate(drains))
    assert all(n == STEP for n in counts[:-1]) and 0 < counts[-1] <= STEP
