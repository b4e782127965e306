"""Hostile trace files for the trace-file reader (``branchtrace.open``).

tests/unit/test_tracefile_fuzz.py damages trace files at random; most of that damage is
caught by the records' CRCs. Here the damage comes with a correct CRC (the record is
re-framed after a field is changed), so the payload decoders themselves meet hostile
length and count fields, forged chunk sizes and nonsense block tables. Every read must
give a trace or one BranchtraceError, within a time bound, and its peak allocation
(tracemalloc) must stay below a small multiple of the file size plus a constant: a
length field must never make the reader allocate what the file does not hold. The
store and block table files are fuzzed in test_fuzz_store_files.py; fuzzing.py says why
hypothesis and not atheris.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import zstandard
from damage import assert_damage_marked, assert_prefixes, blockid_branches
from fuzzing import HOSTILE, bounded, examples, report_bounds
from hypothesis import given
from hypothesis import strategies as st

import branchtrace
from branchtrace.errors import BranchtraceError
from branchtrace.model import BRANCH_DTYPE, Gap, Mapping, ModuleMap
from branchtrace.store import Encoding, StoreMode
from branchtrace.store.blocks import BLOCK_DTYPE
from branchtrace.trace import Trace
from branchtrace.tracefile import TraceWriter, open_trace
from branchtrace.tracefile.blocksrec import BlocksHead
from branchtrace.tracefile.format import (
    FRAME,
    PREAMBLE,
    ChunkHead,
    EndInfo,
    FileHeader,
    RecordType,
    ThreadInfo,
    frame,
)


def read_trace(path: Path, data: bytes, seen: dict[str, int] | None = None) -> Trace | None:
    """The trace ``data`` holds, or None after one BranchtraceError of one line; in
    bounded time and memory (fuzzing.bounded)."""
    path.write_bytes(data)
    with bounded("trace file", len(data), seen):
        try:
            return branchtrace.open(path)
        except BranchtraceError as err:
            assert "\n" not in str(err)
            return None


@dataclass
class Valid:
    data: bytes
    threads: dict[int, np.ndarray]     # the branches the file holds, as the test wrote them
    gaps: list[Gap]                    # the gaps and notes it wrote (no sign of damage)
    notes: list[str]


def damage_marked(valid: Valid, trace: Trace | None, forged: bool = True) -> None:
    """``trace`` is None or ``valid`` with pieces missing where gaps or notes say so;
    ``forged``: the damage has a valid CRC (see damage.assert_damage_marked)."""
    if trace is not None:
        assert_damage_marked(valid.threads, trace, valid.gaps, valid.notes, forged)


# -- trace files ---------------------------------------------------------------------------

def records(data: bytes) -> list[tuple[int, int, bytes]]:
    """(offset, type, payload) of every record of a valid file."""
    out, pos = [], PREAMBLE.size
    while pos + FRAME.size <= len(data):
        rtype, length = struct.unpack_from("<H", data, pos + 4)[0], struct.unpack_from("<I", data, pos + 8)[0]
        out.append((pos, rtype, data[pos + FRAME.size:pos + FRAME.size + length]))
        pos += FRAME.size + length
    return out


def rebuild(data: bytes, changed: dict[int, bytes], extra_before_end: bytes = b"") -> bytes:
    """The file with the payloads of records ``changed`` (by index) replaced and their
    CRCs made right again."""
    out = bytearray(data[:PREAMBLE.size])
    recs = records(data)
    for i, (pos, rtype, payload) in enumerate(recs):
        if rtype == RecordType.END:
            out += extra_before_end
        flags = struct.unpack_from("<H", data, pos + 6)[0]   # (CHUNK: 16-bit ids)
        out += frame(RecordType(rtype), changed.get(i, payload), flags)
    return bytes(out)


def _write_fromto(path: Path) -> Valid:
    r = np.random.default_rng(7)
    w = TraceWriter.create(path, FileHeader(int(Encoding.FROMTO), int(StoreMode.STREAM), 24,
                                            4096, 1024, 9, 1, "ptrace", "t", ("./p", "a b")))
    raw = np.zeros(3000, [("from_ip", "<u8"), ("to_ip", "<u8"), ("kind", "u1"), ("pad", "V7")])
    raw["from_ip"], raw["to_ip"] = r.integers(0, 1 << 47, 3000), r.integers(0, 1 << 47, 3000)
    raw["kind"] = r.integers(0, 9, 3000)
    for tid in (9, 10):
        for k in range(3):
            w.write_chunk(tid, raw[k * 1000:(k + 1) * 1000], 1 + k, 2 + k)
        w.write_thread(ThreadInfo(tid, 3000, 3100, 100))
    w.write_module(ModuleMap("/bin/p", 0x1000, 0x9000, 0x1000, "beef",
                             (Mapping(0x1000, 0x9000, "r-xp", 0, "/bin/p"),)))
    w.write_gap(Gap(10, 5, 100, "lost"))
    w.write_note("a note")
    w.finish(EndInfo(3, 9, "signaled", signal=11, fault_address=0, fault_pc=0x1234, tid=9))
    branches = np.zeros(3000, BRANCH_DTYPE)
    for name in ("from_ip", "to_ip", "kind"):
        branches[name] = raw[name]
    return Valid(path.read_bytes(), {9: branches, 10: branches}, [Gap(10, 5, 100, "lost")],
                 ["a note"])


def _write_blockid(path: Path) -> Valid:
    r = np.random.default_rng(8)
    table = np.zeros(64, BLOCK_DTYPE)
    table["start"] = 0x1000 + 16 * np.arange(64)
    table["last"], table["end"] = table["start"] + 8, table["start"] + 12
    table["kind"], table["flags"], table["ninsn"] = np.arange(64) % 9, 1, 3
    w = TraceWriter.create(path, FileHeader(int(Encoding.BLOCKID), int(StoreMode.RING), 4,
                                            4096, 0, 5, 1, "stalker", "t", ("p",)))
    ids = r.integers(0, 64, 6000).astype("<u4")
    for k in range(3):
        w.write_chunk(5, ids[2000 * k:2000 * (k + 1)], 1, 2)
    w.write_thread(ThreadInfo(5, 6000, 6000, 0))
    w.write_blocks(table)
    w.finish(EndInfo(3, 5, "exited", code=0))
    return Valid(path.read_bytes(), {5: blockid_branches(ids, table)}, [], [])


@pytest.fixture(scope="module", params=["fromto", "blockid"])
def valid(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Valid:
    path = tmp_path_factory.mktemp("fuzzr") / f"{request.param}.btrace"
    made = (_write_fromto if request.param == "fromto" else _write_blockid)(path)
    trace = open_trace(path)
    assert not trace.truncated and list(trace.threads) == list(made.threads)
    for tid, branches in made.threads.items():
        assert len(branches) > 1000 and np.array_equal(trace.threads[tid], branches), tid
    return made


def test_truncated_at_every_record_boundary(valid: Valid, tmp_path: Path) -> None:
    """Cut at, and one byte either side of, every frame start, frame end, string and
    zstd frame start: the part before the cut is read, with the file marked cut short,
    and what it holds is the start of each thread."""
    data = valid.data
    cuts = {0, 1, 7, 8, PREAMBLE.size - 1, PREAMBLE.size, len(data) - 1}
    for pos, _, payload in records(data):
        for at in (pos, pos + 4, pos + 12, pos + FRAME.size, pos + FRAME.size + 32,
                   pos + FRAME.size + len(payload)):
            cuts.update((at - 1, at, at + 1))
    whole_records, kept = 0, []
    for cut in sorted(c for c in cuts if 0 <= c < len(data)):
        trace = read_trace(tmp_path / "t.btrace", data[:cut])
        if cut > PREAMBLE.size + FRAME.size + len(records(data)[0][2]):
            assert trace is not None and trace.truncated and trace.exit.status == "unknown"
            assert_prefixes(valid.threads, trace)
            kept.append(sum(len(b) for b in trace.threads.values()))
            whole_records += 1
    assert whole_records > 10
    assert kept == sorted(kept) and 0 < kept[-1]


# Offsets of the length and count fields of each record type's payload (see format.py).
LENGTH_FIELDS = {
    RecordType.HEADER: [(8, "Q"), (16, "I"), (32, "I")],     # capacity, chunk records, backend
    RecordType.CHUNK: [(0, "I"), (4, "I"), (8, "Q")],        # tid, count, first_index
    RecordType.THREAD: [(8, "Q"), (16, "Q"), (24, "Q")],     # kept, written, lost
    RecordType.GAP: [(8, "Q"), (16, "Q"), (24, "I")],        # index, count, reason length
    RecordType.MODULE: [(24, "I")],                          # path length
    RecordType.BLOCKS: [(0, "Q"), (8, "Q"), (16, "I"), (20, "I"), (24, "I")],
    RecordType.END: [(40, "I")],                             # status length
}


def test_every_named_length_field_hostile(valid: Valid, tmp_path: Path) -> None:
    """Each length/count field of each record, set to each hostile value, CRC intact:
    what is read is the original with pieces missing where a gap or note says so (a
    chunk given another thread id shows as a hole in its own thread)."""
    tried = 0
    for i, (_, rtype, payload) in enumerate(records(valid.data)):
        for offset, fmt in LENGTH_FIELDS.get(RecordType(rtype), []):
            for value in HOSTILE:
                if offset + struct.calcsize(fmt) > len(payload):
                    continue
                patched = bytearray(payload)
                struct.pack_into("<" + fmt, patched, offset, value & ((1 << (8 * struct.calcsize(fmt))) - 1))
                trace = read_trace(tmp_path / "t.btrace",
                                   rebuild(valid.data, {i: bytes(patched)}))
                damage_marked(valid, trace)
                tried += 1
    assert tried > 100


def test_hostile_fields_with_valid_crc(valid: Valid, tmp_path: Path, soak: bool) -> None:
    """4 or 8 bytes anywhere in a payload, CRC intact. Inside a chunk's zstd frame (no
    content checksum) the records themselves may change unseen: there, only counts are
    checked (no thread gets more branches than it had)."""
    recs = records(valid.data)

    @examples(soak, 80)
    @given(which=st.integers(0, len(recs) - 1), where=st.floats(0, 1, exclude_max=True),
           value=st.one_of(st.sampled_from(HOSTILE), st.integers(0, (1 << 64) - 1)),
           wide=st.booleans())
    def run(which: int, where: float, value: int, wide: bool) -> None:
        payload = bytearray(recs[which][2])
        size = 8 if wide else 4
        if len(payload) < size:
            return
        at = int(where * (len(payload) - size + 1))
        payload[at:at + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        trace = read_trace(tmp_path / "t.btrace", rebuild(valid.data, {which: bytes(payload)}))
        if trace is None:
            return
        if recs[which][1] in (RecordType.CHUNK, RecordType.BLOCKS) and at + size > 24:
            for tid, branches in trace.threads.items():
                assert len(branches) <= max(len(b) for b in valid.threads.values()), tid
        else:
            damage_marked(valid, trace)

    run()


def test_payloads_cut_or_grown_with_valid_crc(valid: Valid, tmp_path: Path, soak: bool) -> None:
    """A record whose payload is cut short (strings and counts past its end) or has
    junk appended, framed correctly: a cut chunk is a gap, junk after a zstd frame is
    ignored (room for new fields)."""
    recs = records(valid.data)

    @examples(soak, 60)
    @given(which=st.integers(0, len(recs) - 1), keep=st.floats(0, 1),
           junk=st.binary(max_size=64))
    def run(which: int, keep: float, junk: bytes) -> None:
        payload = recs[which][2]
        trace = read_trace(tmp_path / "t.btrace",
                           rebuild(valid.data, {which: payload[:int(keep * len(payload))] + junk}))
        damage_marked(valid, trace, forged=False)

    run()


def forged_chunks(n: int, records_each: int, record_size: int, first_tid: int = 77,
                  one_thread: bool = True) -> bytes:
    """CHUNK records whose zstd frame header declares ``records_each`` records but holds
    none of them (the frame stops after its header)."""
    whole = zstandard.ZstdCompressor().compress(b"\0" * (records_each * record_size))
    header_only = whole[:zstandard.frame_header_size(whole)] + b"\0\0\0"
    return b"".join(frame(RecordType.CHUNK, ChunkHead(
        first_tid if one_thread else first_tid + i, records_each,
        i * records_each if one_thread else 0, 1, 2).encode() + header_only) for i in range(n))


@pytest.mark.parametrize("many", [1, 40, 2000])
def test_forged_chunk_sizes_allocate_nothing(valid: Valid, tmp_path: Path, many: int) -> None:
    """Chunks claiming 16 MiB each (2000 of them: 32 GiB) in a file of a few hundred KiB:
    the other threads keep their real chunks, the forged ones become a corrupt-chunk gap."""
    record_size = struct.unpack_from("<I", records(valid.data)[0][2], 4)[0]
    data = rebuild(valid.data, {}, forged_chunks(many, (16 << 20) // record_size, record_size))
    trace = read_trace(tmp_path / "t.btrace", data)
    assert trace is not None and len(trace.threads[77]) == 0
    for tid, branches in valid.threads.items():
        assert np.array_equal(trace.threads[tid], branches), tid
    assert sum(g.count for g in trace.gaps if g.tid == 77) == many * ((16 << 20) // record_size)


def test_forged_chunk_sizes_stay_out_of_memory(valid: Valid, tmp_path: Path) -> None:
    """The same 32 GiB of forged chunks, read in a fresh process: what the process
    really holds in memory (its peak resident set, not just what tracemalloc sees)
    grows by far less than a single forged chunk's 16 MiB claim, let alone 32 GiB."""
    record_size = struct.unpack_from("<I", records(valid.data)[0][2], 4)[0]
    path = tmp_path / "t.btrace"
    path.write_bytes(rebuild(valid.data, {}, forged_chunks(2000, (16 << 20) // record_size,
                                                      record_size)))
    code = (
        "import resource, sys, branchtrace\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "t = branchtrace.open(sys.argv[1])\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(after - before, len(t.threads[77]))\n")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    grew_kib, kept = map(int, done.stdout.split())
    assert kept == 0
    assert grew_kib < 12 * 1024, f"the resident set grew by {grew_kib} KiB"


def test_forged_blocks_record_allocates_nothing(valid: Valid, tmp_path: Path) -> None:
    """BLOCKS records claiming 16 MiB of table rows each, holding only a frame header."""
    whole = zstandard.ZstdCompressor().compress(b"\0" * (16 << 20))
    header_only = whole[:zstandard.frame_header_size(whole)]
    forged = b"".join(frame(RecordType.BLOCKS, BlocksHead(
        i << 20, (16 << 20) // 32, 32, (("", "V32", 0),)).encode() + header_only)
        for i in range(200))
    trace = read_trace(tmp_path / "t.btrace", rebuild(valid.data, {}, forged))
    damage_marked(valid, trace, forged=False)


def test_many_gaps_and_holes_stay_fast(valid: Valid, tmp_path: Path) -> None:
    """Thousands of GAP records and missing chunks on one thread: no quadratic work."""
    record_size = struct.unpack_from("<I", records(valid.data)[0][2], 4)[0]
    rows = zstandard.ZstdCompressor().compress(b"\0" * record_size)
    extra = bytearray()
    for i in range(4000):     # one-record chunks with a hole after each, and a gap each
        extra += frame(RecordType.CHUNK, ChunkHead(99, 1, 2 * i, 1, 2).encode() + rows)
        extra += frame(RecordType.GAP, struct.pack("<IIQQ", 99, 0, 2 * i, 1) + b"\0\0\0\0")
    data, seen = rebuild(valid.data, {}, bytes(extra)), {"peak": 0}
    began = time.monotonic()
    trace = read_trace(tmp_path / "t.btrace", data, seen)
    # one record per chunk, a hole after each: 4000 from/to branches; block ids pair
    # consecutive records, and no two are consecutive here: none
    assert trace is not None and len(trace.threads[99]) == (4000 if record_size == 24 else 0)
    assert time.monotonic() - began < 5          # it was 10 s (16000 records: 128 s)
    # Only small records: the Python objects per record dominate (measured about 10x
    # the file; a file of real chunks stays under 4x), still linear in the file.
    assert seen["peak"] < 12 * len(data), seen


REPORTS = (["crash"], ["stats"], ["history", "--calls"], ["history"],
           ["profile", "--format", "collapsed", "-o", os.devnull],
           ["coverage", "--format", "drcov", "-o", os.devnull])


def test_hostile_block_rows_and_kinds_reach_every_report(
        tmp_path: Path, soak: bool, capsys: pytest.CaptureFixture[str]) -> None:
    """Well-formed records holding nonsense: block table rows of random bytes (kinds,
    flags, addresses in any order), block ids past the table, FROMTO kinds past the
    last BranchKind. The file reads, and every report comes out with exit 0."""
    from branchtrace.cli import main
    from branchtrace.model import BranchKind

    @examples(soak, 12)
    @given(rows=st.integers(1, 80), seed=st.integers(0, 1 << 32), fromto=st.booleans(),
           ordered=st.booleans())
    def run(rows: int, seed: int, fromto: bool, ordered: bool) -> None:
        r = np.random.default_rng(seed)
        path = tmp_path / "t.btrace"
        encoding, size = (Encoding.FROMTO, 24) if fromto else (Encoding.BLOCKID, 4)
        w = TraceWriter.create(path, FileHeader(int(encoding), int(StoreMode.RING), size, 4096,
                                                0, 5, 1, "stalker", "t", ("p",)))
        table = np.frombuffer(r.integers(0, 256, rows * 32, dtype=np.uint8).tobytes(),
                              BLOCK_DTYPE).copy()
        if ordered:                          # plausible addresses, hostile kinds and flags
            table["start"] = 0x1000 + 16 * np.arange(rows)
            table["last"] = table["start"] + r.integers(0, 40, rows)
            table["end"] = table["start"] + r.integers(0, 40, rows)
        if fromto:
            raw = np.frombuffer(r.integers(0, 256, 500 * 24, dtype=np.uint8).tobytes(),
                                [("from_ip", "<u8"), ("to_ip", "<u8"), ("kind", "u1"),
                                 ("pad", "V7")])
            w.write_chunk(5, raw, 1, 2)
        else:
            w.write_chunk(5, r.integers(0, rows + 5, 500).astype("<u4"), 1, 2)
            w.write_blocks(table)
        w.finish(EndInfo(3, 5, "signaled", signal=11, fault_address=0,
                         fault_pc=int(table["start"][0]), tid=5))
        trace = branchtrace.open(path)
        assert int(trace.threads[5]["kind"].max(initial=0)) <= max(BranchKind)
        for args in REPORTS:
            assert main([*args, str(path)]) == 0, (args, capsys.readouterr().err)
        capsys.readouterr()

    run()


def test_files_that_are_not_regular(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (tmp_path, fifo, tmp_path / "missing"):
        with bounded("trace file", 0), pytest.raises(BranchtraceError):
            open_trace(path)


def test_zz_report_measured_bounds(capsys: pytest.CaptureFixture[str]) -> None:
    report_bounds(capsys, "trace file")
