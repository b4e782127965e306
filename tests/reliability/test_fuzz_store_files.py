"""Hostile store files (the tracer's reader side: ``Store.open`` and every read
operation) and block table files (``blocks.read_table``): hostile header and thread
table fields, counters the target's producer may have written, truncation at every
boundary, random damage. Each read gives a result or one BranchtraceError, in bounded
time and memory (fuzzing.bounded); neither format has a CRC, so all of it reaches the
readers' own checks.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
from fuzzing import HOSTILE, bounded, examples, report_bounds
from hypothesis import given
from hypothesis import strategies as st

from branchtrace.errors import BranchtraceError, StoreError
from branchtrace.store import (
    HEADER_DTYPE,
    HEADER_SIZE,
    THREAD_DTYPE,
    Encoding,
    Store,
    StoreConfig,
    StoreMode,
)
from branchtrace.store.blocks import BLOCK_DTYPE, TABLE_HEADER_SIZE, create_table, read_table


def _store_bytes(directory: Path, mode: StoreMode) -> bytes:
    chunk = 64 if mode == StoreMode.STREAM else 0
    config = StoreConfig(mode, Encoding.FROMTO, 256, chunk, None, 8)
    store = Store.create(config, directory)
    try:
        for tid in (100, 101, 102):
            buf = store.add_thread(tid)
            for k in range(40 * (tid - 99)):
                buf.push(0x1000 + k, 0x2000 + k, 1)
        store.mark_exited(101)
        return store.path.read_bytes()
    finally:
        store.close(unlink=True)


@pytest.fixture(scope="module", params=[StoreMode.RING, StoreMode.STREAM])
def store_file(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return _store_bytes(tmp_path_factory.mktemp("store"), request.param)


#: what _store_bytes pushes: thread tid holds 40 * (tid - 99) records (no ring wraps)
ORIGINAL = {tid: [(0x1000 + k, 0x2000 + k, 1) for k in range(40 * (tid - 99))]
            for tid in (100, 101, 102)}


def as_tuples(records: np.ndarray) -> list[tuple[int, int, int]]:
    return [(int(r["from_ip"]), int(r["to_ip"]), int(r["kind"])) for r in records]


def read_store(path: Path, data: bytes) -> dict[int, list[tuple[int, int, int]]] | None:
    """Open the store as the tracer does and use every read operation on each thread,
    each saying the same thing: size = what peek gives = what get reaches = what the
    drains take, and never more than a thread's region holds. The records peek gave,
    per thread (None after one BranchtraceError)."""
    path.write_bytes(data)
    seen: dict[int, list[tuple[int, int, int]]] = {}
    with bounded("store file", len(data)):
        try:
            store = Store.open(path)
        except BranchtraceError as err:
            assert "\n" not in str(err)
            return None
        try:
            status = store.status()
            assert status.memory_used <= len(data)
            assert status.held == store.size() == sum(t.held for t in status.threads)
            for tid in store.tids():
                held = store.size(tid)
                assert 0 <= held <= store.capacity, (tid, held, store.capacity)
                peek = store.peek(tid)
                assert len(peek) == held, (tid, len(peek), held)
                if held:
                    assert store.get(tid, 0) == peek[-1] and store.get(tid, held - 1) == peek[0]
                with pytest.raises(StoreError):
                    store.get(tid, held)
                seen[tid] = as_tuples(peek)
                taken = len(store.drain(tid, final=False)) + len(store.drain(tid))
                if store.mode == StoreMode.STREAM:
                    assert taken == held, (tid, taken, held)
                else:     # ring: a running producer's oldest slots may be dropped as lost
                    assert taken <= held, (tid, taken, held)
                assert store.size(tid) == 0
        except BranchtraceError as err:
            assert "\n" not in str(err)
            return None
        finally:
            store.close(unlink=False)
    return seen


def test_store_paths_that_are_not_stores(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (tmp_path, fifo, tmp_path / "missing", Path("/dev/zero"), Path("/dev/null")):
        with bounded("store file", 0), pytest.raises(BranchtraceError):
            Store.open(path)


HEADER_FIELDS = [(name, HEADER_DTYPE.fields[name][1], HEADER_DTYPE.fields[name][0].itemsize)
                 for name in HEADER_DTYPE.names or () if name != "magic"]
ENTRY_FIELDS = [(name, THREAD_DTYPE.fields[name][1], THREAD_DTYPE.fields[name][0].itemsize)
                for name in THREAD_DTYPE.names or ()]


def test_store_reads_back(store_file: bytes, tmp_path: Path) -> None:
    assert read_store(tmp_path / "s.bts", store_file) == ORIGINAL


def test_store_every_header_and_entry_field_hostile(store_file: bytes, tmp_path: Path) -> None:
    tried = 0
    targets = [(HEADER_SIZE * 0 + off, size) for _, off, size in HEADER_FIELDS]
    for slot in range(4):
        targets += [(HEADER_SIZE + 64 * slot + off, size) for _, off, size in ENTRY_FIELDS]
    for at, size in targets:
        for value in HOSTILE:
            data = bytearray(store_file)
            data[at:at + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
            read_store(tmp_path / "s.bts", bytes(data))
            tried += 1
    assert tried > 300


def test_store_counters_hostile_together(store_file: bytes, tmp_path: Path) -> None:
    """written, consumed and lost_acc of one thread, each at an edge value (a producer
    in the target writes ``written``: it may write anything)."""
    edges = [0, 1, 255, 256, 1 << 63, (1 << 64) - 1]
    for written in edges:
        for consumed in edges:
            for lost in edges:
                data = bytearray(store_file)
                struct.pack_into("<QQQ", data, HEADER_SIZE + 64 + 16, written, consumed, lost)
                read_store(tmp_path / "s.bts", bytes(data))


def test_store_truncated_at_every_boundary(store_file: bytes, tmp_path: Path) -> None:
    """A cut store gives one error, or (a cut in a region no thread uses) the records
    as they were: never some of a thread's records, never others."""
    with Store.open(_copy(store_file, tmp_path / "v.bts")) as store:
        ends = [store.regions_offset + k * store.region_bytes for k in range(4)]
    read = 0
    for at in {0, 8, 96, HEADER_SIZE, HEADER_SIZE + 64, *ends}:
        for cut in (at - 1, at, at + 1):
            if 0 <= cut < len(store_file):
                seen = read_store(tmp_path / "s.bts", store_file[:cut])
                if seen is not None:
                    assert seen == ORIGINAL, cut
                    read += 1
    assert read == 0     # every thread's region ends at the end of the file


def test_store_random_damage(store_file: bytes, tmp_path: Path, soak: bool) -> None:
    limit = HEADER_SIZE + 64 * 8

    @examples(soak, 80)
    @given(flips=st.lists(st.tuples(st.integers(0, limit - 1), st.integers(0, 7)),
                          min_size=1, max_size=6),
           wide=st.lists(st.tuples(st.integers(0, limit // 8 - 1),
                                   st.sampled_from(HOSTILE)), max_size=2))
    def run(flips: list[tuple[int, int]], wide: list[tuple[int, int]]) -> None:
        data = bytearray(store_file)
        for at, bit in flips:
            data[at] ^= 1 << bit
        for word, value in wide:
            struct.pack_into("<Q", data, 8 * word, value)
        read_store(tmp_path / "s.bts", bytes(data))

    run()


def _copy(data: bytes, path: Path) -> Path:
    path.write_bytes(data)
    return path


# -- block tables --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def table_file(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = create_table(tmp_path_factory.mktemp("blocks"), "t", capacity=256)
    rows = np.zeros(100, BLOCK_DTYPE)
    rows["start"], rows["flags"] = 0x1000 + 16 * np.arange(100), 1
    with open(path, "r+b") as f:
        f.seek(TABLE_HEADER_SIZE)
        f.write(rows.tobytes())
        f.seek(24)
        f.write(struct.pack("<I", 100))
    table, overflow = read_table(path)
    assert len(table) == 100 and overflow == 0
    return path.read_bytes()


def read_blocks(path: Path, data: bytes, original: bytes) -> None:
    """Read a damaged block table: one error, or rows that are the start of the rows
    ``original`` (the undamaged file) holds, never more than ``data`` has room for."""
    path.write_bytes(data)
    with bounded("block table file", len(data)):
        try:
            table, overflow = read_table(path)
        except BranchtraceError as err:
            assert "\n" not in str(err)
            return
    assert len(table) * BLOCK_DTYPE.itemsize <= len(data) - TABLE_HEADER_SIZE
    rows = np.frombuffer(original[TABLE_HEADER_SIZE:], BLOCK_DTYPE)
    assert np.array_equal(table, rows[:len(table)]) and overflow >= 0


def test_block_table_hostile_capacity_and_count(table_file: bytes, tmp_path: Path) -> None:
    """capacity 2^40 and count 2^32-1 in a 8 KiB file: one error, nothing allocated."""
    for capacity in HOSTILE:
        for count in (0, 100, 257, 0xFFFF_FFFF):
            data = bytearray(table_file)
            struct.pack_into("<QI", data, 16, capacity & ((1 << 64) - 1), count)
            read_blocks(tmp_path / "b", bytes(data), table_file)
    data = bytearray(table_file)
    struct.pack_into("<QI", data, 16, 1 << 40, 0xFFFF_FFFF)
    (tmp_path / "b").write_bytes(data)
    with pytest.raises(BranchtraceError, match="truncated"):
        read_table(tmp_path / "b")


def test_block_table_random_damage(table_file: bytes, tmp_path: Path, soak: bool) -> None:
    @examples(soak, 80)
    @given(cut=st.integers(0, len(table_file)),
           flips=st.lists(st.tuples(st.integers(0, TABLE_HEADER_SIZE - 1), st.integers(0, 7)),
                          max_size=6))
    def run(cut: int, flips: list[tuple[int, int]]) -> None:
        data = bytearray(table_file[:cut])
        for at, bit in flips:
            if at < len(data):
                data[at] ^= 1 << bit
        read_blocks(tmp_path / "b", bytes(data), table_file)

    run()


def test_block_table_not_a_file(tmp_path: Path) -> None:
    for path in (tmp_path, tmp_path / "missing"):
        with pytest.raises(BranchtraceError):
            read_table(path)


def test_zz_report_measured_bounds(capsys: pytest.CaptureFixture[str]) -> None:
    report_bounds(capsys, "store file", "block table file")
