"""Block-id threads decoded chunk by chunk (decode/fused.py) give exactly what the
two-pass path gives: the same branches, gaps, notes and counts, on files with several
threads, many small chunks, chunks bigger than a worker's step, corrupt chunks (at the
start, in the middle, after part of them was placed), a forged chunk claiming 16 MiB,
missing chunks, and chunk ends between the two blocks of a taken branch and of a fall-
through. Chunk times differ only in being exact: each covers its chunk's branches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zstandard

from branchtrace.decode import decode_blocks
from branchtrace.decode import fused
from branchtrace.decode import jit as decode_jit
from branchtrace.model import BranchKind, Gap
from branchtrace.store import Encoding, StoreMode
from branchtrace.store.blocks import (
    BLOCK_DTYPE,
    FLAG_ASYNC,
    FLAG_FOREIGN,
    FLAG_HOOKED,
    FLAG_VALID,
)
from branchtrace.trace import Trace
from branchtrace.tracefile import open_trace
from branchtrace.tracefile.chunkbody import NARROW
from branchtrace.tracefile.blocksrec import BlocksHead, dtype_fields
from branchtrace.tracefile.format import (
    MAGIC,
    PREAMBLE,
    VERSION,
    ChunkHead,
    EndInfo,
    FileHeader,
    RecordType,
    ThreadInfo,
    frame,
)

pytestmark = pytest.mark.skipif(not decode_jit.available(),
                                reason="numba is not installed (pip install -e '.[fast]')")

ZSTD = zstandard.ZstdCompressor(level=1)
FORGED = (16 << 20) // 4          # ids a forged chunk claims (the most a chunk may)


def _table(rng: np.random.Generator, n: int = 40) -> np.ndarray:
    """Blocks laid end to end in pairs (the first falls through into the second), with
    every flag somewhere; block 0 falls through into block 1, block 2 does not."""
    t = np.zeros(n, BLOCK_DTYPE)
    t["start"] = 0x1000 + 64 * np.arange(n, dtype=np.uint64)
    t["end"] = t["start"] + np.uint64(20)
    t["start"][1::2] = t["end"][0::2]
    t["end"][1::2] = t["start"][1::2] + np.uint64(20)
    t["last"] = t["end"] - np.uint64(2)
    t["kind"] = rng.integers(0, len(BranchKind), n)
    flags = np.full(n, FLAG_VALID, np.uint8)
    for flag, share in ((FLAG_FOREIGN, 0.15), (FLAG_HOOKED, 0.1), (FLAG_ASYNC, 0.1)):
        flags[rng.random(n) < share] |= flag
    flags[rng.random(n) < 0.05] = 0
    flags[:3] = FLAG_VALID
    t["flags"] = flags
    return t


def _chunk(tid: int, first: int, ids: np.ndarray, how: str = "good",
           narrow: bool = False) -> bytes:
    """A CHUNK record of ``ids``; ``narrow``: stored as 16-bit ids (chunkbody.NARROW)."""
    body = ZSTD.compress(np.ascontiguousarray(ids, "<u2" if narrow else "<u4").tobytes())
    count = len(ids)
    if how == "cut":               # declares its size, holds the first half of it
        body = body[:len(body) // 2]
    elif how == "forged":          # claims 16 MiB, holds nothing but the frame header
        whole = zstandard.ZstdCompressor().compress(b"\0" * (FORGED * 4))
        body, count = whole[:zstandard.frame_header_size(whole)] + b"\0\0\0", FORGED
        narrow = False
    return frame(RecordType.CHUNK, ChunkHead(tid, count, first, 10 + first, 20 + first).encode()
                 + body, flags=NARROW if narrow else 0)


def _write(path: Path, table: np.ndarray, records: list[bytes], kept: dict[int, int]) -> None:
    header = FileHeader(int(Encoding.BLOCKID), int(StoreMode.STREAM), 4, 1 << 16, 1 << 15,
                        7, 1, "stalker", "test", ("./prog",))
    out = [PREAMBLE.pack(MAGIC, VERSION, 0), frame(RecordType.HEADER, header.encode()), *records]
    out.append(frame(RecordType.BLOCKS, BlocksHead(0, len(table), table.dtype.itemsize,
                                                   tuple(dtype_fields(table.dtype))).encode()
                     + ZSTD.compress(table.tobytes())))
    out += [frame(RecordType.THREAD, ThreadInfo(tid, n, n, 0).encode()) for tid, n in kept.items()]
    out.append(frame(RecordType.END, EndInfo(99, 7, "exited", code=0).encode()))
    path.write_bytes(b"".join(out))


def _open(path: Path, monkeypatch: pytest.MonkeyPatch, fused_on: bool) -> tuple[Trace, int]:
    """The trace, and how many threads the fused path decoded."""
    taken = []
    real = fused.decode

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        got = real(*args, **kwargs)
        taken.append(got is not None)
        return got

    monkeypatch.setattr(fused, "decode", spy)
    monkeypatch.setattr(fused, "FUSED_MIN_IDS", 0 if fused_on else 1 << 62)
    trace = open_trace(path)
    return trace, sum(taken)


def _same(a: Trace, b: Trace) -> None:
    """Fused ``a`` and two-pass ``b`` agree (times: the same chunks, each exact in ``a``)."""
    assert list(a.threads) == list(b.threads)
    for tid in a.threads:
        assert a.threads[tid].dtype == b.threads[tid].dtype
        assert np.array_equal(a.threads[tid], b.threads[tid]), tid
        ta, tb = a.chunk_times[tid], b.chunk_times[tid]
        assert len(ta) == len(tb)
        assert np.array_equal(ta[["first_ns", "last_ns"]], tb[["first_ns", "last_ns"]])
        assert int(ta["count"].sum()) == int(tb["count"].sum())
    assert (a.gaps, a.notes, a.written, a.lost) == (b.gaps, b.notes, b.written, b.lost)


def _runs(tid: int, pieces: list[tuple[np.ndarray, str]]) -> list[list[np.ndarray]]:
    """The runs of good chunks of a thread (a bad chunk or a missing one ends a run)."""
    runs: list[list[np.ndarray]] = [[]]
    for ids, how in pieces:
        if how == "good":
            runs[-1].append(ids)
        elif runs[-1]:
            runs.append([])
    return [r for r in runs if r]


def _expected_times(table: np.ndarray, runs: list[list[np.ndarray]]) -> list[tuple[int, int]]:
    """(index, count) of each good chunk: the branches whose second block it holds."""
    out, n = [], 0
    for run in runs:
        done, branches = 0, 0
        for ids in run:
            done += len(ids)
            upto = len(decode_blocks(np.concatenate(run)[:done], table))
            out.append((n + branches, upto - branches))
            branches = upto
        n += branches
    return out


@pytest.mark.parametrize("step,narrow", [(fused.STEP_IDS, False), (700, False), (64, False),
                                         (fused.STEP_IDS, True), (64, True)])
def test_fused_agrees_with_the_two_pass_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            step: int, narrow: bool) -> None:
    """Both paths, on chunks good, cut, forged and missing; ``narrow``: every other chunk
    holds 16-bit ids (format version 2), read back as the same 32-bit ids."""
    monkeypatch.setattr(fused, "STEP_IDS", step)
    rng = np.random.default_rng(step)
    table = _table(rng)
    threads: dict[int, list[tuple[np.ndarray, str]]] = {}
    # thread 7: many small chunks, ends cut between 0 -> 1 (falls through) and 2 -> 0
    # (a taken branch), a corrupt chunk in the middle and a long one cut short
    small = [rng.integers(0, 44, int(rng.integers(1, 400))).astype("<u4") for _ in range(60)]
    small[10][-1], small[11][0] = 0, 1
    small[20][-1], small[21][0] = 2, 0
    threads[7] = [(ids, "cut" if k in (30, 45) else "good") for k, ids in enumerate(small)]
    # several zstd blocks, cut short in the third: part of it is placed before it fails
    # (with a small step), and it begins with a taken branch from the chunk before
    long = rng.integers(0, 44, 100_000).astype("<u4")
    small[39][-1], long[0] = 2, 0
    threads[7].insert(40, (long, "cut"))
    # thread 8: its first chunk corrupt, a forged one, then a missing one, big chunks
    threads[8] = [(rng.integers(0, 40, 2500).astype("<u4"), "cut"),
                  (rng.integers(0, 40, 5000).astype("<u4"), "good"),
                  (np.zeros(0, "<u4"), "forged"),
                  (rng.integers(0, 40, 4000).astype("<u4"), "good"),
                  (rng.integers(0, 40, 300).astype("<u4"), "missing"),
                  (rng.integers(0, 40, 1).astype("<u4"), "good"),
                  (rng.integers(0, 40, 3000).astype("<u4"), "good")]
    # thread 9: one id per chunk
    threads[9] = [(rng.integers(0, 40, 1).astype("<u4"), "good") for _ in range(50)]
    records, kept, at = [], {}, {tid: 0 for tid in threads}
    pending = {tid: list(pieces) for tid, pieces in threads.items()}
    while any(pending.values()):                 # the threads' chunks interleaved
        for tid in threads:
            if pending[tid]:
                ids, how = pending[tid].pop(0)
                if how != "missing":
                    records.append(_chunk(tid, at[tid], ids, how,
                                          narrow and len(records) % 2 == 0))
                at[tid] += FORGED if how == "forged" else len(ids)
    kept = dict(at)
    path = tmp_path / "f.btrace"
    _write(path, table, records, kept)

    got, fused_threads = _open(path, monkeypatch, True)
    assert fused_threads == 3                       # else this test proves nothing
    want, none = _open(path, monkeypatch, False)
    assert none == 0
    _same(got, want)
    for tid, pieces in threads.items():
        runs = _runs(tid, pieces)
        expected = np.concatenate([decode_blocks(np.concatenate(r), table) for r in runs])
        assert np.array_equal(got.threads[tid], expected), tid
        times = [(int(c["index"]), int(c["count"])) for c in got.chunk_times[tid]]
        assert times == _expected_times(table, runs), tid
    bad = sum(len(ids) for ids, how in threads[7] if how == "cut")
    assert sum(g.count for g in got.gaps if g.tid == 7) == bad
    assert Gap(8, 0, 2500, "corrupt chunk") in got.gaps
    assert got.lost[8] == 2500 + FORGED + 300
    # the taken branch across chunks 20/21 is there, the fall-through across 10/11 is not
    seq = np.concatenate([ids for ids, _ in threads[7][:30]])
    assert np.array_equal(got.threads[7][:len(decode_blocks(seq, table))],
                          decode_blocks(seq, table))


def test_damaged_files_read_alike(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bytes flipped or files cut anywhere: both paths read the same (a differential
    fuzz; the record CRCs catch most damage, so chunks are also damaged with the CRC
    made right)."""
    monkeypatch.setattr(fused, "STEP_IDS", 500)
    rng = np.random.default_rng(5)
    table = _table(rng)
    pieces = [(tid, rng.integers(0, 44, int(rng.integers(1, 1500))).astype("<u4"))
              for _ in range(30) for tid in (3, 4)]
    at = {3: 0, 4: 0}
    chunks = []
    for tid, ids in pieces:
        chunks.append((tid, at[tid], ids))
        at[tid] += len(ids)
    decoded = 0
    for trial in range(40):
        records = []
        for tid, first, ids in chunks:
            rec = bytearray(_chunk(tid, first, ids))
            if rng.random() < 0.1:              # damaged inside, the CRC made right
                body = bytearray(ZSTD.compress(ids.tobytes()))
                body[int(rng.integers(4, len(body)))] ^= 1 << int(rng.integers(0, 8))
                rec = bytearray(frame(RecordType.CHUNK, ChunkHead(
                    tid, len(ids), first, 1, 2).encode() + bytes(body)))
            records.append(bytes(rec))
        path = tmp_path / f"d{trial}.btrace"
        _write(path, table, records, at)
        if trial % 2:                           # and cut short
            data = path.read_bytes()
            path.write_bytes(data[:int(rng.integers(100, len(data)))])
        got, n = _open(path, monkeypatch, True)
        want, _ = _open(path, monkeypatch, False)
        _same(got, want)
        decoded += n
    assert decoded > 30             # cut before the block table, a file has nothing to decode


@pytest.mark.parametrize("missing", ["reserve", "numba"])
def test_the_two_pass_path_reads_what_the_fused_one_cannot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, missing: str) -> None:
    """Where memory cannot be reserved (strict overcommit) or numba does not compile
    (found only once a chunk holds ids), the two-pass path reads the thread."""
    rng = np.random.default_rng(1)
    table = _table(rng)
    ids = rng.integers(0, 40, 5000).astype("<u4")
    path = tmp_path / "r.btrace"
    _write(path, table, [_chunk(5, 0, ids[:2000]), _chunk(5, 2000, ids[2000:])], {5: 5000})
    if missing == "reserve":
        monkeypatch.setattr(fused, "reserve", lambda count, dtype: None)
    else:
        monkeypatch.setattr(decode_jit, "bind", lambda *columns: None)
    got, n = _open(path, monkeypatch, True)
    assert n == 0
    assert np.array_equal(got.threads[5], decode_blocks(ids, table))
    assert [int(c["count"]) for c in got.chunk_times[5]] != []
