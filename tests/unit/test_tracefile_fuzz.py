"""Fuzz the trace-file reader: damage a valid file at random; reading it must give a
trace or one TraceFormatError, quickly, and never allocate much more than the file."""

from __future__ import annotations

import struct
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from damage import assert_damage_marked, assert_prefixes, blockid_branches
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from branchtrace.errors import TraceFormatError
from branchtrace.model import BRANCH_DTYPE, ExitInfo, Gap, ModuleMap
from branchtrace.store import Encoding, StoreMode
from branchtrace.trace import CHUNK_TIMES_DTYPE, Trace
from branchtrace.tracefile import TraceWriter, open_trace, save
from branchtrace.tracefile.format import FRAME, PREAMBLE, EndInfo, FileHeader, ThreadInfo

#: the gaps and notes the fixtures write (they say nothing about damage)
KNOWN_GAPS = [Gap(11, 100, 5, "lost")]
KNOWN_NOTES = ["n"]
SETTINGS = settings(max_examples=120, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


def _fromto(path: Path) -> dict[int, np.ndarray]:
    """Random addresses (they hardly compress: the decoded size is close to the file's)."""
    r = np.random.default_rng(3)
    threads = {}
    for tid, n in ((10, 9000), (11, 2500), (12, 300)):
        a = np.zeros(n, BRANCH_DTYPE)
        a["from_ip"], a["to_ip"] = r.integers(0, 1 << 47, n), r.integers(0, 1 << 47, n)
        a["kind"] = r.integers(0, 9, n)
        threads[tid] = a
    spans = np.array([(0, 3000, 1, 2), (3000, 3000, 2, 3), (6000, 3000, 3, 4)], CHUNK_TIMES_DTYPE)
    trace = Trace("ptrace", "stream", ("./prog", "x"), 10, ExitInfo("exited", code=0),
                  [ModuleMap("/bin/prog", 0x1000, 0x9000, 0x1000, "beef")], threads,
                  [Gap(11, 100, 5, "lost")], notes=["n"], start_time=1.0, end_time=2.0,
                  chunk_times={10: spans})        # thread 10 in three chunks
    save(trace, path)
    data = path.read_bytes()
    assert len(data) > 100_000
    return threads


def _blockid(path: Path) -> dict[int, np.ndarray]:
    """Block ids of two threads over a table of 64 blocks (ids 64..69 are unknown).
    The expected branches are worked out here from the table's rule (a taken branch
    where a block does not end where the next one starts, from its last instruction),
    independently of the decoder."""
    r = np.random.default_rng(4)
    table = np.zeros(64, [("start", "<u8"), ("last", "<u8"), ("end", "<u8"), ("kind", "u1"),
                          ("flags", "u1"), ("ninsn", "<u2"), ("reserved", "<u4")])
    table["start"] = 0x1000 + 16 * np.arange(64)
    table["last"], table["end"] = table["start"] + 8, table["start"] + 12
    table["kind"], table["flags"], table["ninsn"] = np.arange(64) % 9, 1, 3
    w = TraceWriter.create(path, FileHeader(int(Encoding.BLOCKID), int(StoreMode.RING), 4,
                                            4096, 0, 5, 1, "stalker", "t", ("p",)))
    threads = {}
    for tid in (5, 6):
        ids = r.integers(0, 70, 12000).astype("<u4")
        for k in range(4):
            w.write_chunk(tid, ids[3000 * k:3000 * (k + 1)], 1, 2)
        w.write_thread(ThreadInfo(tid, 12000, 12000, 0))
        threads[tid] = blockid_branches(ids, table)
    w.write_blocks(table)
    w.finish(EndInfo(3, 5, "signaled", signal=11, fault_address=0))
    return threads


@dataclass
class Valid:
    data: bytes
    threads: dict[int, np.ndarray]     # what the file holds, as the test wrote it

    def __len__(self) -> int:
        return len(self.data)


@pytest.fixture(scope="module", params=["fromto", "blockid"])
def valid(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Valid:
    path = tmp_path_factory.mktemp("fuzz") / f"{request.param}.btrace"
    threads = (_fromto if request.param == "fromto" else _blockid)(path)
    whole = open_trace(path)             # it is valid to begin with, and reads back whole
    assert list(whole.threads) == list(threads)
    for tid, branches in threads.items():
        assert np.array_equal(whole.threads[tid], branches), tid
    return Valid(path.read_bytes(), threads)


def record_offsets(data: bytes) -> list[int]:
    out, pos = [], PREAMBLE.size
    while pos + FRAME.size <= len(data):
        out.append(pos)
        pos += FRAME.size + struct.unpack_from("<I", data, pos + 8)[0]
    return out


def read_back(path: Path, data: bytes, valid_size: int) -> Trace | None:
    """Read ``data`` as a trace file: a trace or one TraceFormatError, in bounded time
    and memory."""
    path.write_bytes(data)
    tracemalloc.start()
    began = time.monotonic()
    try:
        trace = open_trace(path)
    except TraceFormatError as err:
        assert "\n" not in str(err) and str(path) in str(err)
        trace = None
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert time.monotonic() - began < 10
    assert peak < 4 * valid_size + (4 << 20), peak
    return trace


@SETTINGS
@given(cut=st.floats(0, 1))
def test_random_truncation(valid: Valid, tmp_path: Path, cut: float) -> None:
    """What survives a cut is the start of every thread, and the trace says it is cut."""
    size = int(len(valid) * cut)
    trace = read_back(tmp_path / "t.btrace", valid.data[:size], len(valid))
    if trace is not None:
        assert_prefixes(valid.threads, trace)
        assert trace.truncated == (size < len(valid))


def test_truncation_at_every_record_end_keeps_every_whole_chunk(valid: Valid,
                                                                 tmp_path: Path) -> None:
    """Cut after each record: the branches kept only grow as the cut moves on, and the
    whole file gives every branch."""
    kept = []
    for at in record_offsets(valid.data)[1:] + [len(valid)]:
        trace = read_back(tmp_path / "t.btrace", valid.data[:at], len(valid))
        assert trace is not None
        assert_prefixes(valid.threads, trace)
        kept.append(sum(len(b) for b in trace.threads.values()))
    assert kept == sorted(kept) and kept[0] < kept[-1]
    assert kept[-1] == sum(len(b) for b in valid.threads.values())


@SETTINGS
@given(flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 7)),
                      min_size=1, max_size=8))
def test_random_bit_flips(valid: Valid, tmp_path: Path, flips: list[tuple[float, int]]) -> None:
    """The CRCs catch every flip: what is read is the original with pieces missing, and
    a gap or a note says where."""
    data = bytearray(valid.data)
    for where, bit in flips:
        data[int(where * len(data))] ^= 1 << bit
    trace = read_back(tmp_path / "t.btrace", bytes(data), len(valid))
    if trace is not None:
        assert_damage_marked(valid.threads, trace, KNOWN_GAPS, KNOWN_NOTES)


@SETTINGS
@given(which=st.floats(0, 1, exclude_max=True),
       length=st.one_of(st.integers(0, (1 << 32) - 1), st.sampled_from([0, 1, 0xFFFF_FFFF, 1 << 31])),
       field=st.sampled_from([8, 4, 0]))
def test_hostile_length_fields(valid: Valid, tmp_path: Path, which: float, length: int,
                               field: int) -> None:
    data = bytearray(valid.data)
    offsets = record_offsets(valid.data)
    at = offsets[int(which * len(offsets))]
    if field == 8:                              # the record's length
        struct.pack_into("<I", data, at + 8, length)
    elif field == 4:                            # the type and flags
        struct.pack_into("<I", data, at + 4, length)
    else:                                       # the first field of the payload (a count, a tid)
        struct.pack_into("<I", data, at + FRAME.size, length)
    trace = read_back(tmp_path / "t.btrace", bytes(data), len(valid))
    if trace is not None:               # the CRC (of type, flags, length, payload) fails
        assert_damage_marked(valid.threads, trace, KNOWN_GAPS, KNOWN_NOTES)


@SETTINGS
@given(chunk=st.binary(min_size=1, max_size=4096), where=st.floats(0, 1))
def test_random_bytes_spliced_in(valid: Valid, tmp_path: Path, chunk: bytes, where: float) -> None:
    at = int(where * len(valid))
    trace = read_back(tmp_path / "t.btrace", valid.data[:at] + chunk + valid.data[at:],
                      len(valid) + len(chunk))
    if trace is not None:
        assert_damage_marked(valid.threads, trace, KNOWN_GAPS, KNOWN_NOTES)


def test_a_file_of_sync_markers_does_not_hang(tmp_path: Path, valid: Valid) -> None:
    """Hostile: every position looks like a record claiming most of the file."""
    head = valid.data[:record_offsets(valid.data)[1]]
    fake = (b"BTR\x1e" + struct.pack("<HHII", 2, 0, 150_000, 0)) * 20_000
    read_back(tmp_path / "t.btrace", head + fake, len(head) + len(fake))
