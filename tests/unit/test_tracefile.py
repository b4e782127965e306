"""Trace files: round trips, damage, cut-short files, and the one-line errors."""

from __future__ import annotations

import os
import stat
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

import branchtrace
from branchtrace.errors import TraceFormatError, UsageError
from branchtrace.model import BRANCH_DTYPE, BranchKind, ExitInfo, Gap, Mapping, ModuleMap
from branchtrace.store import FROMTO_DTYPE, Encoding, StoreMode
from branchtrace.trace import CHUNK_TIMES_DTYPE, Trace
from branchtrace.tracefile import CORRUPT, VERSION, TraceWriter, open_trace, save, scan
from branchtrace.tracefile.blocksrec import dtype_fields, dtype_from_fields
from branchtrace.tracefile.format import (
    FRAME,
    PREAMBLE,
    SYNC,
    EndInfo,
    FileHeader,
    RecordType,
    ThreadInfo,
    frame,
)

rng = np.random.default_rng(7)
#: The Stalker backend's block table row (branchtrace.store.blocks.BLOCK_DTYPE), spelled out
BLOCK_DTYPE = np.dtype([("start", "<u8"), ("last", "<u8"), ("end", "<u8"), ("kind", "u1"),
                        ("flags", "u1"), ("ninsn", "<u2"), ("reserved", "<u4")])


def make_table(rows: list[tuple[int, int, int, int]]) -> np.ndarray:
    table = np.zeros(len(rows), BLOCK_DTYPE)
    for i, (start, last, end, kind) in enumerate(rows):
        table[i] = (start, last, end, kind, 1, 1, 0)     # flags 1: a complete entry
    return table


def hand_decoded(rows: list[tuple[int, int, int]], n: int) -> np.ndarray:
    """``rows`` (from, to, kind: the branches of one pass over a pattern, worked out by
    hand) repeated to ``n`` branches, as a branch array."""
    out = np.zeros(n, BRANCH_DTYPE)
    reps = -(-n // len(rows))
    for k, name in enumerate(("from_ip", "to_ip", "kind")):
        out[name] = np.tile([r[k] for r in rows], reps)[:n]
    return out


T0 = 1700000000_250000000


def branches(n: int, seed: int = 0) -> np.ndarray:
    r = np.random.default_rng(seed)
    out = np.zeros(n, BRANCH_DTYPE)
    out["from_ip"] = r.integers(0x400000, 0x7fff_ffff_ffff, n)
    out["to_ip"] = r.integers(0x400000, 0x7fff_ffff_ffff, n)
    out["kind"] = r.integers(0, len(BranchKind), n)
    return out


MODULES = [
    ModuleMap("/usr/bin/prog", 0x55d0_0000_0000, 0x55d0_0000_4000, 0x55d0_0000_0000, "ab12cd",
              (Mapping(0x55d0_0000_0000, 0x55d0_0000_1000, "r--p", 0, "/usr/bin/prog"),
               Mapping(0x55d0_0000_1000, 0x55d0_0000_4000, "r-xp", 0x1000, "/usr/bin/prog"))),
    ModuleMap("[vdso]", 0x7ffd_0000_0000, 0x7ffd_0000_2000, 0x7ffd_0000_0000),
    ModuleMap("/lib/caf\udcc3.so", 0x7f00_0000_0000, 0x7f00_0010_0000, 0x7f00_0000_0000, "ff"),
]


def synthetic() -> Trace:
    """Three threads (one empty), a ring gap, modules, notes, a crash."""
    threads = {100: branches(70_000, 1), 101: branches(1234, 2), 102: branches(0)}
    return Trace(
        backend="ptrace", mode="ring", argv=("./prog", "two words", "caf\udcc3"), pid=100,
        exit=ExitInfo("signaled", signal=11, fault_address=0, fault_pc=0x55d0_0000_1139,
                      tid=101, core_dumped=True),
        modules=MODULES, threads=threads,
        gaps=[Gap(100, 0, 500, "ring buffer overwrote the oldest records"),
              Gap(101, 17, 3, "the thread was stopped")],
        written={100: 70_500, 101: 1237, 102: 0}, lost={100: 500, 101: 3, 102: 0},
        notes=["a note", "another"], start_time=1700000000.25, end_time=1700000003.5,
        capacity=65536,
        chunk_times={100: np.array([(0, 50_000, T0, T0 + 10**9), (50_000, 20_000, T0 + 10**9,
                                                                  T0 + 3 * 10**9)],
                                   dtype=CHUNK_TIMES_DTYPE)},
    )


def assert_same(a: Trace, b: Trace) -> None:
    assert (a.backend, a.mode, a.argv, a.pid, a.exit) == (b.backend, b.mode, b.argv, b.pid, b.exit)
    assert list(a.threads) == list(b.threads)
    for tid in a.threads:
        assert np.array_equal(a.threads[tid], b.threads[tid]), tid
    assert a.modules == b.modules
    assert [m.mappings for m in a.modules] == [m.mappings for m in b.modules]
    assert (a.gaps, a.written, a.lost, a.notes) == (b.gaps, b.written, b.lost, b.notes)
    assert (a.start_time, a.end_time, a.capacity) == (b.start_time, b.end_time, b.capacity)


def test_round_trip_fromto(tmp_path: Path) -> None:
    trace = synthetic()
    path = tmp_path / "t.btrace"
    save(trace, path)
    back = branchtrace.open(path)
    assert_same(trace, back)
    assert not back.truncated
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # chunk times survive (cut in file chunks of at most 1 MiB of records)
    times = back.chunk_times[100]
    assert [tuple(int(x) for x in t) for t in times] == [
        (0, 43690, T0, T0 + 10**9), (43690, 50_000 - 43690, T0, T0 + 10**9),
        (50_000, 20_000, T0 + 10**9, T0 + 3 * 10**9)]
    stamps = back.times(100)
    assert np.all(np.diff(stamps[50_000:]) >= 0) and stamps[-1] == T0 + 3 * 10**9
    assert stamps[49_999] == T0 + 10**9 and stamps[0] > T0
    assert list(back)[:2] == list(trace)[:2]     # Branch objects for small cases


def blockid_file(path: Path, table: np.ndarray, ids: dict[int, np.ndarray]) -> None:
    header = FileHeader(int(Encoding.BLOCKID), int(StoreMode.STREAM), 4, 1 << 16, 1 << 15,
                        4242, 10**18, "stalker", "test", ("./prog",))
    w = TraceWriter.create(path, header)
    for tid, seq in ids.items():            # several chunks per thread, interleaved
        for k, part in enumerate(np.array_split(seq, 3)):
            w.write_chunk(tid, part, 10**18 + k, 10**18 + k + 1)
    w.write_blocks(table)
    for m in MODULES:
        w.write_module(m)
    w.write_gap(Gap(4243, 5, 9, "stalker lost them"))
    for tid, seq in ids.items():
        w.write_thread(ThreadInfo(tid, len(seq), len(seq) + 9 * (tid == 4243), 9 * (tid == 4243)))
    w.finish(EndInfo(10**18 + 5, 4242, "exited", code=3))


def test_round_trip_blockid_with_block_table(tmp_path: Path) -> None:
    # blocks: a loop 0x1000..0x1024 whose block 1 calls the function in block 2, which
    # returns to block 3, which jumps back to block 0:
    #   0: 0x1000..0x1010 ends with a conditional (not taken: falls through into 1)
    #   1: 0x1010..0x101c ends with `call 0x2000` (its return address is 3's start)
    #   2: 0x2000..0x2005 ends with `ret`
    #   3: 0x101c..0x1024 ends with `jmp 0x1000`
    table = make_table([(0x1000, 0x100c, 0x1010, BranchKind.COND),
                        (0x1010, 0x1018, 0x101c, BranchKind.CALL),
                        (0x2000, 0x2004, 0x2005, BranchKind.RETURN),
                        (0x101c, 0x1020, 0x1024, BranchKind.JUMP)])
    call = (0x1018, 0x2000, BranchKind.CALL)
    ret = (0x2004, 0x101c, BranchKind.RETURN)
    back = (0x1020, 0x1000, BranchKind.JUMP)
    # 4242: the loop 25000 times: 0 -> 1 falls through, then call, ret, jmp (the last
    # pass ends in block 3: no jmp); 4243: passes that call (0 1 2 3) and passes that
    # skip the call (0 1 3: 1 -> 3 falls through, only the jmp is taken)
    ids = {4242: np.tile(np.array([0, 1, 2, 3], "<u4"), 25_000),
           4243: np.tile(np.array([0, 1, 2, 3, 0, 1, 3], "<u4"), 700),
           4244: np.zeros(1, "<u4")}
    expected = {4242: hand_decoded([call, ret, back], 3 * 25_000 - 1),
                4243: hand_decoded([call, ret, back, back], 4 * 700 - 1),
                4244: np.zeros(0, BRANCH_DTYPE)}
    path = tmp_path / "b.btrace"
    blockid_file(path, table, ids)
    tf = scan(path)
    assert tf.blocks is not None and tf.blocks.dtype == BLOCK_DTYPE
    assert np.array_equal(tf.blocks, table)
    trace = open_trace(path)
    assert (trace.backend, trace.mode, trace.pid, trace.exit) == \
        ("stalker", "stream", 4242, ExitInfo("exited", code=3))
    assert list(trace.threads) == [4242, 4243, 4244]
    for tid in ids:     # chunks are decoded as one sequence, across chunk ends
        assert np.array_equal(trace.branches(tid), expected[tid]), tid
    assert trace.notes == []
    assert trace.gaps == [Gap(4243, 5, 9, "stalker lost them")]
    assert trace.lost == {4242: 0, 4243: 9, 4244: 0}
    assert trace.modules == MODULES and not trace.truncated


def test_block_table_layouts() -> None:
    for dtype in (BLOCK_DTYPE, np.dtype("<u8"),
                  np.dtype({"names": ["a", "b"], "formats": ["<u4", "(2,3)<i2"],
                            "offsets": [0, 8], "itemsize": 24})):
        assert dtype_from_fields(dtype_fields(dtype), dtype.itemsize) == dtype
    for bad in ([("x", "O", 0)], [("x", "<u8", 4)], [("x", "(9999,9999,9999)u8", 0)],
                [("x", "u8; import os", 0)]):
        with pytest.raises(ValueError):
            dtype_from_fields(bad, 8)


def written(tmp_path: Path, name: str = "t.btrace") -> Path:
    path = tmp_path / name
    save(synthetic(), path)
    return path


def records(path: Path) -> list[tuple[int, int, int]]:
    """(offset, type, length) of every record."""
    data = path.read_bytes()
    out, pos = [], PREAMBLE.size
    while pos < len(data):
        _, rtype, _, length, _ = FRAME.unpack_from(data, pos)
        out.append((pos, rtype, length))
        pos += FRAME.size + length
    return out


def test_a_corrupt_chunk_becomes_a_gap(tmp_path: Path) -> None:
    path = written(tmp_path)
    data = bytearray(path.read_bytes())
    chunks = [(o, n) for o, t, n in records(path) if t == RecordType.CHUNK]
    assert len(chunks) == 4             # thread 100: 43690, 6310, 20000 records; 101: 1234
    offset, length = chunks[0]
    data[offset + FRAME.size + length // 2] ^= 0x40
    path.write_bytes(bytes(data))
    trace = open_trace(path)
    full = synthetic()
    assert np.array_equal(trace.branches(100), full.branches(100)[43690:])
    assert np.array_equal(trace.branches(101), full.branches(101))
    assert Gap(100, 0, 43690, CORRUPT) in trace.gaps
    # the ring gap before the lost chunk stays where it was, at the start
    assert Gap(100, 0, 500, "ring buffer overwrote the oldest records") in trace.gaps
    assert trace.lost[100] == 500 + 43690 and not trace.truncated
    assert any("damaged" in note for note in trace.notes)


def test_a_corrupt_length_field_loses_only_that_record(tmp_path: Path) -> None:
    path = written(tmp_path)
    data = bytearray(path.read_bytes())
    offset, _, _ = [r for r in records(path) if r[1] == RecordType.CHUNK][1]
    struct.pack_into("<I", data, offset + 8, 0xFFFF_FFF0)
    path.write_bytes(bytes(data))
    trace = open_trace(path)
    full = synthetic()
    expected = np.concatenate([full.branches(100)[:43690], full.branches(100)[50_000:]])
    assert np.array_equal(trace.branches(100), expected)
    assert Gap(100, 43690, 6310, CORRUPT) in trace.gaps
    assert np.array_equal(trace.branches(101), full.branches(101))
    assert trace.exit == full.exit and trace.modules == full.modules


@pytest.mark.parametrize("twentieth", range(1, 20))
def test_cut_short_files_read_up_to_their_last_whole_chunk(tmp_path: Path, twentieth: int) -> None:
    path = written(tmp_path)
    data = path.read_bytes()
    cut = tmp_path / "cut.btrace"
    cut.write_bytes(data[:len(data) * twentieth // 20])
    trace = open_trace(cut)
    assert trace.truncated
    assert any("did not finish" in note for note in trace.notes)
    assert trace.exit.status == "unknown"
    full = synthetic()
    for tid, array in trace.threads.items():   # a prefix of what was recorded
        assert np.array_equal(array, full.branches(tid)[:len(array)])


def test_unknown_records_are_skipped(tmp_path: Path) -> None:
    path = written(tmp_path)
    data = path.read_bytes()
    at = records(path)[1][0]
    path.write_bytes(data[:at] + frame(77, b"from the future") + data[at:])  # type: ignore[arg-type]
    trace = open_trace(path)
    assert trace.notes[-1] == "1 record(s) of types this branchtrace does not know were skipped"
    trace.notes.pop()
    assert_same(synthetic(), trace)


def one_line(path: Path | str) -> str:
    with pytest.raises(TraceFormatError) as info:
        open_trace(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_errors_are_one_line(tmp_path: Path) -> None:
    assert "no such file" in one_line(tmp_path / "missing.btrace")
    assert "directory" in one_line(tmp_path)
    (tmp_path / "empty").write_bytes(b"")
    assert "empty" in one_line(tmp_path / "empty")
    (tmp_path / "text").write_text("hello, world\n" * 10)
    assert "not a branchtrace trace file" in one_line(tmp_path / "text")
    assert "not a branchtrace trace file" in one_line("/bin/sh")
    data = written(tmp_path).read_bytes()
    (tmp_path / "short").write_bytes(data[:30])
    assert "truncated header" in one_line(tmp_path / "short")
    (tmp_path / "tiny").write_bytes(data[:5])
    assert "truncated header" in one_line(tmp_path / "tiny")
    broken = bytearray(data)
    broken[PREAMBLE.size + FRAME.size + 3] ^= 1
    (tmp_path / "broken").write_bytes(bytes(broken))
    assert "corrupt header" in one_line(tmp_path / "broken")


def test_a_newer_version_says_so(tmp_path: Path) -> None:
    path = written(tmp_path)
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, 8, VERSION + 1)
    path.write_bytes(bytes(data))
    assert one_line(path).endswith(
        f"made by a newer branchtrace: format version {VERSION + 1}, this one reads up to {VERSION}")


def test_writer_never_follows_a_symlink_and_makes_0600(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    link = tmp_path / "out.btrace"
    link.symlink_to(victim)
    with pytest.raises(UsageError, match="symbolic link"):
        save(synthetic(), link)
    assert victim.read_text() == "precious"
    existing = tmp_path / "old.btrace"
    existing.write_text("old contents")
    existing.chmod(0o644)
    save(synthetic(), existing)
    assert stat.S_IMODE(existing.stat().st_mode) == 0o600
    assert open_trace(existing).total() == 70_000 + 1234
    with pytest.raises(UsageError, match="cannot write"):
        save(synthetic(), tmp_path / "no" / "such" / "dir.btrace")


def test_every_record_is_framed_and_checksummed(tmp_path: Path) -> None:
    path = written(tmp_path)
    data = path.read_bytes()
    magic, version, _ = PREAMBLE.unpack_from(data)
    assert magic == b"\x89BTR\r\n\x1a\n" and version == VERSION
    recs = records(path)
    assert recs[0][1] == RecordType.HEADER and recs[-1][1] == RecordType.END
    assert sum(FRAME.size + n for _, _, n in recs) == len(data) - PREAMBLE.size
    for offset, _, length in recs:
        sync, rtype, flags, n, crc = FRAME.unpack_from(data, offset)
        assert sync == SYNC and flags == 0
        body = data[offset + FRAME.size: offset + FRAME.size + n]
        assert zlib.crc32(body, zlib.crc32(data[offset + 4: offset + 12])) == crc


def test_a_killed_writer_leaves_a_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "live.btrace"
    header = FileHeader(1, 2, 24, 4096, 2048, 0, 1, "ptrace", "test", ("x",))
    w = TraceWriter.create(path, header)
    raw = np.zeros(5000, FROMTO_DTYPE)
    raw["from_ip"] = np.arange(5000)
    w.write_chunk(7, raw[:3000], 1, 2)
    w.write_chunk(7, raw[3000:], 2, 3)
    w.close()                                # no END record: the tracer died here
    trace = open_trace(path)
    assert trace.truncated and trace.pid == 7 and trace.exit.status == "unknown"
    assert np.array_equal(trace.branches(7)["from_ip"], np.arange(5000))
    assert [tuple(int(x) for x in c) for c in trace.chunk_times[7]] == [(0, 3000, 1, 2),
                                                                      (3000, 2000, 2, 3)]
    os.truncate(path, path.stat().st_size - 10)   # and in the middle of its last write
    trace = open_trace(path)
    assert trace.truncated and len(trace.branches(7)) == 3000
    assert any("cut short" in note for note in trace.notes)


def test_progress_line_is_throttled_and_erased(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from branchtrace.cli import _record

    clock = [100.0]
    monkeypatch.setattr(_record.time, "monotonic", lambda: clock[0])
    out = io.StringIO()
    line = _record.ProgressLine(out, hz=4)
    for step in range(40):                      # 40 chunks in one second
        clock[0] += 0.025
        line.progress(1000 * (step + 1), 24_000 * (step + 1))
    assert 3 <= out.getvalue().count("\r\x1b[Kbranchtrace:") <= 5
    assert out.getvalue().rsplit("\r\x1b[K", 1)[1] == \
        "branchtrace: 31,000 records, 726.6 KiB written, 40,000 records/s"
    line.finish()
    assert out.getvalue().endswith("\r\x1b[K")
    line.progress(10**6, 10**6)                 # nothing after the end
    assert out.getvalue().endswith("\r\x1b[K")


@pytest.mark.parametrize("cores, workers", [(1, 0), (2, 0), (3, 1), (4, 2), (6, 4), (64, 4)])
def test_compress_workers_leave_the_program_and_the_drain_a_core_each(
        monkeypatch: pytest.MonkeyPatch, cores: int, workers: int) -> None:
    # on 2 cores a pool thread only competed with the drain for the one core the program
    # leaves (bzip2 -9 stream ~15% slower, docs/benchmarks.md): the drain compresses
    from branchtrace import recorder

    monkeypatch.delenv(recorder.COMPRESS_THREADS_ENV, raising=False)
    monkeypatch.setattr(recorder.os, "sched_getaffinity", lambda pid: set(range(cores)))
    assert recorder.compress_workers() == workers
    monkeypatch.setenv(recorder.COMPRESS_THREADS_ENV, "3")
    assert recorder.compress_workers() == 3


@pytest.mark.parametrize("workers", [1, 3])
def test_chunks_compressed_on_a_pool_make_the_same_file(tmp_path: Path, workers: int) -> None:
    # the stream's writer compresses on pool threads (recorder.compress_workers): the
    # chunks land in the order given, before any later record, byte for byte as when
    # the caller compresses them itself; close() appends what is still pending
    header = FileHeader(int(Encoding.BLOCKID), int(StoreMode.STREAM), 4, 1 << 16, 1 << 15,
                        4242, 10**18, "stalker", "test", ("./prog",))
    rng = np.random.default_rng(7)
    parts = [(tid, rng.integers(0, 5000, n).astype("<u4"))
             for tid, n in [(1, 300_000), (2, 70_000), (1, 5), (2, 600_000), (1, 262_144)]]
    table = make_table([(0x1000, 0x100c, 0x1010, BranchKind.COND)])
    files = []
    for n in (0, workers):
        path = tmp_path / f"w{n}.btrace"
        w = TraceWriter.create(path, header, workers=n)
        for k, (tid, ids) in enumerate(parts):
            w.write_chunk(tid, ids, 10**18 + k, 10**18 + k + 1)
            if k == 2:
                w.write_blocks(table)
        w.write_note("after the chunks")
        w.write_chunk(2, parts[1][1], 7, 8)          # pending when the file is closed
        w.close()
        files.append(path.read_bytes())
    assert files[0] == files[1]
    tf = scan(tmp_path / f"w{workers}.btrace")
    assert [c.head.first_index for c in tf.chunks[2]] == [0, 70_000, 70_000 + 262_144,
                                                          70_000 + 524_288, 670_000]
