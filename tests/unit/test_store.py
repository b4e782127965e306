"""The shared-memory store: ring and stream semantics, the six operations, files."""

from __future__ import annotations

import errno
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import branchtrace.store as store_module
from branchtrace.errors import MemoryLimitError, StoreError, UsageError
from branchtrace.model import BRANCH_DTYPE, BranchKind
from branchtrace.store import (
    FROMTO_DTYPE,
    HEADER_DTYPE,
    HEADER_SIZE,
    PAGE,
    RECORD_DTYPES,
    Encoding,
    Store,
    StoreConfig,
    StoreMode,
    StreamConsumer,
    THREAD_DTYPE,
    ThreadState,
)
from branchtrace.store.sizes import parse_size

RING, STREAM = StoreMode.RING, StoreMode.STREAM
SRC = Path(store_module.__file__).resolve().parents[2]
FORMAT_DOC = SRC.parent / "docs" / "store-format.md"

MakeStore = Callable[..., Store]


@pytest.fixture
def make_store() -> Iterator[MakeStore]:
    """Build stores (in private /dev/shm directories) and close them after the test."""
    made: list[Store] = []

    def make(mode: StoreMode = RING, capacity: int = 8, chunk: int = 0,
             encoding: Encoding = Encoding.FROMTO, **kwargs: object) -> Store:
        config = StoreConfig(mode, encoding, capacity, chunk, **kwargs)  # type: ignore[arg-type]
        store = Store.create(config)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def ips(records: np.ndarray) -> list[int]:
    return [int(x) for x in records["from_ip"]]


def push_range(store: Store, tid: int, start: int, stop: int) -> None:
    buffer = store.thread(tid)
    for ip in range(start, stop):
        buffer.push(ip, ip + 1, BranchKind.JUMP)


# -- ring mode ----------------------------------------------------------------------------

def test_ring_wraps_and_counts_lost_exactly(make_store: MakeStore) -> None:
    store = make_store(RING, capacity=5)
    store.add_thread(7)
    push_range(store, 7, 0, 12)
    assert store.size(7) == 5
    assert ips(store.peek(7)) == [7, 8, 9, 10, 11]
    (status,) = store.status().threads
    assert (status.tid, status.written, status.held, status.lost) == (7, 12, 5, 7)
    assert status.state == ThreadState.ACTIVE


@pytest.mark.parametrize(
    ("capacity", "total"), [(1, 1), (1, 10), (7, 6), (7, 7), (7, 8), (1000, 12345)]
)
def test_ring_holds_exactly_the_newest_n(make_store: MakeStore, capacity: int, total: int) -> None:
    store = make_store(RING, capacity=capacity)
    store.add_thread(1).push_many(_fromto(np.arange(total)))
    held = store.drain(1)
    assert ips(held) == list(range(max(0, total - capacity), total))
    assert store.status().threads[0].lost == max(0, total - capacity)


def test_get_zero_is_newest_and_last_is_oldest(make_store: MakeStore) -> None:
    store = make_store(RING, capacity=4)
    store.add_thread(3)
    push_range(store, 3, 100, 110)
    newest, oldest = store.get(3, 0), store.get(3, store.size(3) - 1)
    assert (int(newest["from_ip"]), int(newest["to_ip"]), int(newest["kind"])) == (109, 110, 3)
    assert int(oldest["from_ip"]) == 106
    push_range(store, 3, 110, 111)  # the returned record is a copy, not a view
    assert int(newest["from_ip"]) == 109


@pytest.mark.parametrize("index", [4, 5, -1])
def test_get_out_of_range_is_a_clear_error(make_store: MakeStore, index: int) -> None:
    store = make_store(RING, capacity=4)
    store.add_thread(3)
    push_range(store, 3, 0, 9)
    message = rf"index {index} is out of range for thread 3: it holds 4"
    with pytest.raises(StoreError, match=message):
        store.get(3, index)
    store.clear(3)
    with pytest.raises(StoreError, match="holds no records"):
        store.get(3, 0)
    with pytest.raises(StoreError, match="thread 99 has no buffer"):
        store.get(99, 0)


def test_drain_is_oldest_first_then_empty(make_store: MakeStore) -> None:
    store = make_store(RING, capacity=6)
    store.add_thread(1)
    push_range(store, 1, 0, 4)
    assert ips(store.drain(1)) == [0, 1, 2, 3]
    assert store.size(1) == 0 and store.size() == 0
    assert store.drain(1).size == 0
    status = store.status().threads[0]
    assert (status.written, status.consumed, status.lost) == (4, 4, 0)
    push_range(store, 1, 4, 13)  # 9 more into 6 slots: 3 overwritten, counted at drain
    assert ips(store.drain(1)) == list(range(7, 13))
    push_range(store, 1, 13, 14)
    assert store.status().threads[0].lost == 3
    assert ips(store.drain(1)) == [13]


def test_clear_accounts_overwritten_records(make_store: MakeStore) -> None:
    store = make_store(RING, capacity=3)
    store.add_thread(1)
    store.add_thread(2)
    push_range(store, 1, 0, 10)
    push_range(store, 2, 0, 2)
    store.clear(1)
    assert (store.size(1), store.size(2)) == (0, 2)
    assert store.status().threads[0].lost == 7
    push_range(store, 1, 10, 12)
    assert ips(store.peek(1)) == [10, 11]
    store.clear()
    assert store.size() == 0
    assert [t.lost for t in store.status().threads] == [7, 0]


def test_live_ring_drain_drops_the_record_being_overwritten(make_store: MakeStore) -> None:
    store = make_store(RING, capacity=4)
    store.add_thread(1)
    push_range(store, 1, 0, 10)
    assert ips(store.drain(1, final=False)) == [7, 8, 9]  # slot of 6 is written next
    assert store.status().threads[0].lost == 7


def test_ring_push_many_more_than_capacity_with_wrap(make_store: MakeStore) -> None:
    store = make_store(RING, capacity=5)
    buffer = store.add_thread(1)
    push_range(store, 1, 0, 3)
    canonical = np.zeros(12, BRANCH_DTYPE)
    canonical["from_ip"] = np.arange(3, 15)
    canonical["kind"] = BranchKind.CALL
    buffer.push_many(canonical)
    out = store.drain(1)
    assert ips(out) == [10, 11, 12, 13, 14] and set(out["kind"].tolist()) == {1}
    assert buffer.written == 15
    with pytest.raises(UsageError):
        buffer.push_many(np.arange(3))
    with pytest.raises(UsageError, match="BLOCKID"):
        buffer.push_block(3)


# -- stream mode --------------------------------------------------------------------------

def test_stream_final_drain_takes_the_partial_chunk(make_store: MakeStore) -> None:
    store = make_store(STREAM, capacity=12, chunk=4)
    store.add_thread(1)
    push_range(store, 1, 0, 10)
    assert ips(store.drain(1, final=False)) == list(range(8))
    assert store.drain(1, final=False).size == 0
    assert ips(store.drain(1, final=True)) == [8, 9]
    assert store.size(1) == 0 and store.status().threads[0].lost == 0


def test_stream_counters_past_the_region_say_what_it_holds(make_store: MakeStore) -> None:
    """A corrupt table (the target can write its counters) claiming 30 records written
    into a region of 12: size, peek, get and drain all say 12, and the other 18 are lost,
    not read twice (size said 30 and the drains gave 12 + 2 records)."""
    store = make_store(STREAM, capacity=12, chunk=4)
    store.add_thread(1)
    push_range(store, 1, 0, 10)
    written = HEADER_SIZE + THREAD_DTYPE.fields["written"][1]     # slot 0's counter
    with open(store.path, "r+b") as f:
        f.seek(written)
        f.write((30).to_bytes(8, "little"))
    with Store.open(store.path) as again:
        assert again.size(1) == 12 and len(again.peek(1)) == 12
        assert again.status().threads[0].held == 12
        with pytest.raises(StoreError, match="holds 12 records"):
            again.get(1, 12)
        assert len(again.drain(1, final=False)) + len(again.drain(1)) == 12
        assert again.status().threads[0].lost == 18 and again.size(1) == 0


def test_stream_clear_mid_chunk_keeps_positions_right(make_store: MakeStore) -> None:
    store = make_store(STREAM, capacity=8, chunk=4)
    buffer = store.add_thread(1, should_abort=lambda: True)
    push_range(store, 1, 0, 6)
    store.clear(1)  # consumed = 6, in the middle of the second chunk
    push_range(store, 1, 6, 12)  # chunk 8..11 is free: 8 + 4 - 6 <= 8
    with pytest.raises(StoreError, match="gave up"):  # chunk 12..15 needs consumed >= 8
        push_range(store, 1, 12, 13)
    assert store.status().threads[0].producer_waits == 1
    assert buffer.written == 12 and store.size(1) == 6
    assert ips(store.drain(1, final=False)) == list(range(6, 12))
    push_range(store, 1, 12, 20)
    assert ips(store.drain(1)) == list(range(12, 20))
    status = store.status().threads[0]
    assert (status.lost, status.producer_waits, status.consumed) == (0, 1, 20)


def test_stream_producer_waits_for_a_free_chunk_and_can_abort(make_store: MakeStore) -> None:
    store = make_store(STREAM, capacity=4, chunk=2)
    buffer = store.add_thread(1)
    push_range(store, 1, 0, 4)
    calls: list[int] = []

    def abort() -> bool:
        calls.append(1)
        return len(calls) >= 4

    buffer.should_abort = abort
    with pytest.raises(StoreError, match="thread 1: gave up waiting"):
        buffer.push(4, 5, 0)
    assert store.status().threads[0].producer_waits == 1  # one episode, four polls
    assert len(calls) == 4
    assert ips(store.drain(1, final=False)) == [0, 1, 2, 3]
    buffer.push(4, 5, 0)
    assert store.status().threads[0].producer_waits == 1


@pytest.mark.parametrize("batch", [0, 700])
def test_stream_handoff_to_a_slow_consumer_loses_nothing(make_store: MakeStore, batch: int) -> None:
    total = 200_000
    store = make_store(STREAM, capacity=4096, chunk=1024)
    buffer = store.add_thread(11)
    received: list[np.ndarray] = []

    def slow_sink(tid: int, records: np.ndarray) -> None:
        assert tid == 11
        received.append(records["from_ip"].copy())
        time.sleep(0.002)

    with StreamConsumer(store, slow_sink, interval=0.001) as consumer:
        if batch:
            for start in range(0, total, batch):
                buffer.push_many(_fromto(np.arange(start, min(start + batch, total))))
        else:
            for ip in range(total):
                buffer.push(ip, 0, 0)
    got = np.concatenate(received)
    assert got.size == total and np.array_equal(got, np.arange(total))
    assert consumer.drained == {11: total}
    status = store.status().threads[0]
    assert (status.lost, status.held, status.written) == (0, 0, total)
    assert status.producer_waits > 0


def test_stream_consumer_stop_drains_the_partial_chunk(make_store: MakeStore) -> None:
    store = make_store(STREAM, capacity=8, chunk=4)
    store.add_thread(5)
    got: list[int] = []
    consumer = StreamConsumer(store, lambda tid, a: got.extend(ips(a)), interval=0.0005).start()
    push_range(store, 5, 0, 6)
    deadline = time.monotonic() + 10
    while len(got) < 4 and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(0.02)  # many more passes of the consumer
    assert got == [0, 1, 2, 3]  # whole chunks only while running
    consumer.stop()
    assert got == [0, 1, 2, 3, 4, 5] and consumer.total == 6


def test_stream_consumer_reraises_sink_errors(make_store: MakeStore) -> None:
    store = make_store(STREAM, capacity=4, chunk=2)
    store.add_thread(5)
    push_range(store, 5, 0, 2)

    def sink(tid: int, records: np.ndarray) -> None:
        raise RuntimeError("sink broke")

    consumer = StreamConsumer(store, sink).start()
    with pytest.raises(RuntimeError, match="sink broke"):
        consumer.stop()


# -- encodings and configuration ---------------------------------------------------------

def test_blockid_encoding(make_store: MakeStore) -> None:
    store = make_store(RING, capacity=4, encoding=Encoding.BLOCKID)
    buffer = store.add_thread(2)
    for block in (10, 20, 30):
        buffer.push_block(block)
    buffer.push_many(np.array([40, 50, 0xFFFFFFFF], dtype=np.int64))
    assert store.get(2, 0) == 0xFFFFFFFF
    out = store.drain(2)
    assert out.dtype == np.dtype("<u4") and out.tolist() == [30, 40, 50, 0xFFFFFFFF]
    with pytest.raises(UsageError, match="FROMTO"):
        buffer.push(1, 2, 3)
    with pytest.raises(UsageError, match="32 bits"):
        buffer.push_many(np.array([-1]))
    assert RECORD_DTYPES[Encoding.BLOCKID].itemsize == 4
    assert RECORD_DTYPES[Encoding.FROMTO].itemsize == 24


def test_placement_is_where_a_thread_s_records_land(make_store: MakeStore) -> None:
    """What a producer writing the file itself (the stalker agent) is told: the slot
    and the region offset at which the store reads that thread's records."""
    store = make_store(capacity=16)
    for tid in (101, 102, 103):
        store.add_thread(tid)
    store.release_thread(102)
    store.add_thread(104)                      # takes 102's freed slot and region
    places = {tid: store.placement(tid) for tid in (101, 103, 104)}
    assert sorted(slot for slot, _ in places.values()) == [0, 1, 2]
    assert places[104][0] == 1
    assert len({offset for _, offset in places.values()}) == 3
    written_at = THREAD_DTYPE.fields["written"][1]
    with open(store.path, "r+b") as f:         # one record each, written by offsets alone
        for tid, (slot, offset) in places.items():
            record = np.zeros(1, FROMTO_DTYPE)
            record["from_ip"], record["to_ip"], record["kind"] = tid, tid + 1, BranchKind.CALL
            f.seek(offset)
            f.write(record.tobytes())
            f.seek(HEADER_SIZE + slot * THREAD_DTYPE.itemsize + written_at)
            f.write((1).to_bytes(8, "little"))
    for tid in places:
        assert ips(store.drain(tid)) == [tid]
    with pytest.raises(StoreError, match="no buffer"):
        store.placement(102)


def test_config_from_size() -> None:
    ring = StoreConfig.from_size(parse_size("1000"), RING)
    assert (ring.capacity_records, ring.chunk_records) == (1000, 0)
    assert StoreConfig.from_size(None, RING).capacity_records == 65536
    assert StoreConfig.from_size(parse_size("24KB"), RING).capacity_records == 1024
    assert StoreConfig.from_size(parse_size("4KB"), RING, Encoding.BLOCKID).capacity_records == 1024
    stream = StoreConfig.from_size(parse_size("200000"), STREAM)
    assert (stream.chunk_records, stream.nchunks, stream.capacity_records) == (65536, 3, 196608)
    small = StoreConfig.from_size(parse_size("1"), STREAM)
    assert (small.chunk_records, small.nchunks) == (1, 2)
    default = StoreConfig.from_size(None, STREAM, Encoding.BLOCKID)   # 4 MiB
    assert (default.chunk_records, default.nchunks) == (65536, 16)
    fromto = StoreConfig.from_size(None, STREAM)       # as many whole chunks as fit 4 MiB
    assert (fromto.chunk_records, fromto.nchunks) == (65536, 2)
    with pytest.raises(UsageError, match="whole number of chunks"):
        StoreConfig(STREAM, Encoding.FROMTO, 10, 3)
    with pytest.raises(UsageError):
        StoreConfig(RING, Encoding.FROMTO, 0)


def test_create_over_the_limit_fails_cleanly() -> None:
    config = StoreConfig.from_size(parse_size("1TiB"), RING, memory_limit=1 << 30)
    with pytest.raises(MemoryLimitError) as info:
        Store.create(config)
    message = str(info.value)
    assert "\n" not in message
    assert "1.0 TiB" in message and "1.0 GiB" in message and "--memory-limit" in message
    assert "--buffer-size" in message
    huge = StoreConfig(RING, Encoding.FROMTO, 1 << 40)  # 24 TiB: more than this machine has
    with pytest.raises(MemoryLimitError, match=r"24\.0 TiB"):
        Store.create(huge)


def test_add_thread_over_the_limit_raises_and_store_stays_usable(make_store: MakeStore) -> None:
    config = StoreConfig(RING, Encoding.FROMTO, 1000)
    limit = config.regions_offset + 2 * config.region_bytes
    store = make_store(RING, capacity=1000, memory_limit=limit)
    store.add_thread(1)
    store.add_thread(2)
    with pytest.raises(MemoryLimitError, match="no buffer for thread 3") as info:
        store.add_thread(3)
    assert "\n" not in str(info.value)
    assert store.tids() == [1, 2] and store.status().memory_used == limit
    push_range(store, 1, 0, 3)
    assert ips(store.drain(1)) == [0, 1, 2]
    store.mark_exited(2)
    store.release_thread(2)
    store.add_thread(3)  # reuses the released region
    assert store.tids() == [1, 3] and store.status().memory_used == limit


def test_table_full_is_a_memory_limit_error(make_store: MakeStore) -> None:
    store = make_store(RING, capacity=4, max_threads=2)
    store.add_thread(1)
    store.add_thread(2)
    with pytest.raises(MemoryLimitError, match="all 2 thread slots"):
        store.add_thread(3)
    with pytest.raises(StoreError, match="already has a buffer"):
        store.add_thread(1)


def test_full_file_system_is_a_memory_limit_error(make_store: MakeStore,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    store = make_store(RING, capacity=4)
    store.add_thread(1)
    size = os.path.getsize(store.path)

    def no_space(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with pytest.raises(MemoryLimitError, match="No space left"):
        store.add_thread(2)
    assert os.path.getsize(store.path) == size and store.tids() == [1]


def test_release_and_reuse_of_regions(make_store: MakeStore) -> None:
    store = make_store(RING, capacity=4)
    first = store.add_thread(1)
    store.add_thread(2)
    push_range(store, 1, 0, 9)
    assert store.status().memory_used == os.path.getsize(store.path)
    with pytest.raises(StoreError, match="drain or clear it first"):
        store.release_thread(1)
    store.drain(1)
    store.release_thread(1)
    with pytest.raises(StoreError, match="released"):
        first.push(1, 2, 3)
    size = os.path.getsize(store.path)
    store.add_thread(9)
    assert os.path.getsize(store.path) == size  # region reused, file not grown
    assert store.tids() == [9, 2]
    status = store.status().threads[0]
    assert (status.tid, status.written, status.lost, status.held) == (9, 0, 0, 0)
    push_range(store, 9, 50, 52)
    assert ips(store.drain(9)) == [50, 51]


# -- files --------------------------------------------------------------------------------

def test_file_and_directory_permissions_and_cleanup() -> None:
    store = Store.create(StoreConfig(RING, Encoding.FROMTO, 16))
    directory = store.path.parent
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    if os.access("/dev/shm", os.W_OK):
        assert directory.parent == Path("/dev/shm")
    assert os.path.getsize(store.path) % PAGE == 0
    store.close()
    assert not store.path.exists() and not directory.exists()
    with pytest.raises(StoreError, match="closed"):
        store.size()


def test_regions_are_page_aligned(make_store: MakeStore) -> None:
    store = make_store(RING, capacity=5)
    for tid in (1, 2, 3):
        store.add_thread(tid)
    offsets = np.frombuffer(store.path.read_bytes(), np.uint64, 3 * 8, HEADER_SIZE)[1::8]
    assert all(int(o) % PAGE == 0 for o in offsets) and len(set(offsets.tolist())) == 3


_CHILD = """
import sys
from branchtrace.store import Store
store = Store.open(sys.argv[1])
buffer = store.add_thread(4242)
for ip in range(1000):
    buffer.push(ip, ip + 1, 4)
"""

_CHILD_CREATES = """
import sys
from pathlib import Path
from branchtrace.store import Encoding, Store, StoreConfig, StoreMode
store = Store.create(StoreConfig(StoreMode.STREAM, Encoding.BLOCKID, 64, 16), Path(sys.argv[1]))
buffer = store.add_thread(77)
for block in range(40):
    buffer.push_block(block)
print(store.path)
"""


def _run_child(code: str, arg: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run([sys.executable, "-c", code, arg], env=env, capture_output=True,
                          text=True, timeout=60, check=True)
    return done.stdout.strip()


def test_open_reads_what_an_exited_process_wrote(make_store: MakeStore) -> None:
    store = make_store(RING, capacity=100)
    store.add_thread(1)
    _run_child(_CHILD, str(store.path))
    assert store.tids() == [1, 4242]  # seen by the store that was already open
    assert ips(store.drain(4242)) == list(range(900, 1000))
    assert store.status().threads[1].lost == 900
    with Store.open(store.path) as again:
        assert again.status().threads[1].written == 1000
    assert store.path.exists()  # an opened store does not remove the file by default


def test_open_a_store_whose_creator_exited(tmp_path: Path) -> None:
    path = Path(_run_child(_CHILD_CREATES, str(tmp_path)))
    with Store.open(path) as store:
        assert (store.mode, store.encoding, store.capacity, store.chunk_records) == (
            STREAM, Encoding.BLOCKID, 64, 16)
        assert store.drain(77, final=False).tolist() == list(range(32))
        assert store.drain(77).tolist() == list(range(32, 40))
        store.close(unlink=True)
    assert not path.exists()


@pytest.mark.parametrize(
    "content",
    [b"", b"hello", b"\0" * 8192, b"BTSTORE\0" + b"\x07" * 5000],
)
def test_open_garbage_is_a_store_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "garbage"
    path.write_bytes(content)
    with pytest.raises(StoreError):
        Store.open(path)
    with pytest.raises(StoreError, match="cannot open"):
        Store.open(tmp_path / "missing")


def test_open_rejects_other_versions_and_truncation(make_store: MakeStore, tmp_path: Path) -> None:
    store = make_store(RING, capacity=1000)
    store.add_thread(1)
    data = bytearray(store.path.read_bytes())
    wrong_version = tmp_path / "v2"
    wrong_version.write_bytes(bytes(data[:8]) + (2).to_bytes(4, "little") + bytes(data[12:]))
    with pytest.raises(StoreError, match="version 2"):
        Store.open(wrong_version)
    truncated = tmp_path / "short"
    truncated.write_bytes(bytes(data[:-PAGE]))
    with pytest.raises(StoreError, match="truncated"):
        Store.open(truncated)


# -- property test against a model ------------------------------------------------------

def _fromto(ip: np.ndarray) -> np.ndarray:
    out = np.zeros(len(ip), FROMTO_DTYPE)
    out["from_ip"] = ip
    return out


class Model:
    """What the store should hold, from first principles."""

    def __init__(self, mode: StoreMode, capacity: int, chunk: int) -> None:
        self.mode, self.capacity, self.chunk = mode, capacity, chunk
        self.values: list[int] = []
        self.consumed = self.lost_acc = self.waits = 0

    @property
    def held(self) -> list[int]:
        start = self.consumed
        if self.mode == RING:
            start = max(start, len(self.values) - self.capacity)
        return self.values[start:]

    def lost(self) -> int:
        return self.lost_acc + max(0, len(self.values) - self.consumed - self.capacity)

    def can_push(self) -> bool:
        w = len(self.values)
        if self.mode == RING or w % self.chunk:
            return True
        return w + self.chunk - self.consumed <= self.capacity

    def drain(self, final: bool) -> list[int]:
        w = len(self.values)
        if self.mode == STREAM:
            end = w if final else max(self.consumed, w - w % self.chunk)
            out, self.consumed = self.values[self.consumed:end], end
            return out
        out = self.held
        unsafe = 0
        if not final:  # a running producer may be rewriting the slot of position w - capacity
            unsafe = min(len(out), max(0, w - self.capacity + 1 - (w - len(out))))
        self.lost_acc = self.lost() + unsafe
        self.consumed = w
        return out[unsafe:]

    def clear(self) -> None:
        self.lost_acc = self.lost()
        self.consumed = len(self.values)


operations = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.integers(1, 9)),
        st.tuples(st.just("many"), st.integers(0, 20)),
        st.tuples(st.just("drain"), st.integers(0, 1)),
        st.tuples(st.just("clear"), st.just(0)),
        st.tuples(st.just("get"), st.integers(-1, 10)),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mode=st.sampled_from([RING, STREAM]), chunk=st.integers(1, 4), nchunks=st.integers(1, 3),
       ops=operations)
def test_store_matches_model(make_store: MakeStore, mode: StoreMode, chunk: int, nchunks: int,
                             ops: list[tuple[str, int]]) -> None:
    capacity = chunk * nchunks
    store = make_store(mode, capacity=capacity, chunk=chunk if mode == STREAM else 0)
    buffer = store.add_thread(1, should_abort=lambda: True)
    model = Model(mode, capacity, chunk)
    try:
        for op, arg in ops:
            if op == "push":
                for _ in range(arg):
                    w = len(model.values)
                    if model.can_push():
                        buffer.push(w, 0, 0)
                        model.values.append(w)
                    else:
                        with pytest.raises(StoreError, match="gave up"):
                            buffer.push(w, 0, 0)
                        model.waits += 1
            elif op == "many":  # the part that fits goes in, then the producer gives up
                pending = list(range(len(model.values), len(model.values) + arg))
                batch = _fromto(np.array(pending, dtype=np.uint64))
                while pending and model.can_push():
                    model.values.append(pending.pop(0))
                if pending:
                    with pytest.raises(StoreError, match="gave up"):
                        buffer.push_many(batch)
                    model.waits += 1
                else:
                    buffer.push_many(batch)
            elif op == "drain":
                assert ips(store.drain(1, final=bool(arg))) == model.drain(final=bool(arg))
            elif op == "clear":
                model.clear()
                store.clear(1)
            elif 0 <= arg < len(model.held):
                assert int(store.get(1, arg)["from_ip"]) == model.held[-1 - arg]
            else:
                with pytest.raises(StoreError, match="out of range"):
                    store.get(1, arg)
            status = store.status().threads[0]
            assert store.size(1) == len(model.held) == status.held
            assert ips(store.peek(1)) == model.held
            assert (status.written, status.lost, status.producer_waits) == (
                len(model.values), model.lost(), model.waits)
    finally:
        store.close()


def test_status_reports_the_configuration(make_store: MakeStore) -> None:
    store = make_store(STREAM, capacity=8, chunk=4, memory_limit=1 << 30)
    status = store.status()
    configured = (status.mode, status.encoding, status.capacity, status.chunk_records,
                  status.nchunks)
    assert configured == (STREAM, Encoding.FROMTO, 8, 4, 2)
    assert status.memory_limit <= 1 << 30 and status.memory_used == os.path.getsize(store.path)
    assert status.threads == () and status.held == status.lost == 0


@pytest.mark.parametrize(("section", "dtype"), [("## 2. Header", HEADER_DTYPE),
                                                ("## 3. Thread table", THREAD_DTYPE)])
def test_format_doc_matches_the_layout(section: str, dtype: np.dtype) -> None:
    text = FORMAT_DOC.read_text()
    body = text[text.index(section):].split("\n## ", 1)[0]
    rows = re.findall(r"^\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*\w+\s*\|\s*`(\w+)`", body, re.M)
    documented = {name: (int(offset), int(size)) for offset, size, name in rows}
    assert dtype.fields is not None
    actual = {name: (field[1], field[0].itemsize) for name, field in dtype.fields.items()}
    assert documented == actual
