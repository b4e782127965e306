"""A reader of branchtrace trace files written from docs/trace-format.md alone.

It imports nothing of branchtrace (the standard library, numpy and zstandard only): it is
the proof that the page is enough to get a trace's branches and gaps, the ones
``branchtrace.open()`` gives (tests/integration/test_independent_reader.py). Section
numbers below are the page's. Use::

    f = TraceFile("run.btrace")
    for tid in f.thread_order():
        branches, gaps, written, lost = f.thread(tid)
        # branches: BRANCH (from, to, kind); gaps: (index, count, reason)

or ``f.pieces(tid)`` for the same chunk by chunk (memory bounded by a chunk), and
``python reader.py FILE`` for a summary.
"""

from __future__ import annotations

import mmap
import os
import struct
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import zstandard

MAGIC = b"\x89BTR\r\n\x1a\n"
SYNC = b"BTR\x1e"
VERSION, NARROW = 2, 1                   # 1.1: reads versions 1 and 2; 2.2: u16 block ids
MAX_RECORD = 64 << 20                    # 1.2: largest payload
MAX_CHUNK = 16 << 20                     # 2.2, 2.5: largest decompressed chunk or table part
HEADER, CHUNK, GAP, MODULE, BLOCKS, NOTE, THREAD, END = range(1, 9)
FROMTO, BLOCKID = 1, 2
RECORD_SIZE = {FROMTO: 24, BLOCKID: 4}
FROMTO_DTYPE = np.dtype([("from", "<u8"), ("to", "<u8"), ("kind", "u1"), ("pad", "V7")])
BRANCH = np.dtype([("from", "<u8"), ("to", "<u8"), ("kind", "u1")])
VALID, FOREIGN, HOOKED, ASYNC = 1, 2, 16, 32   # 2.5: block flags
HOOK_RESUME_SPAN = 32
INTERRUPT, OTHER, LAST_KIND = 8, 0, 8           # 4.2
CORRUPT = "corrupt chunk"


class FormatError(Exception):
    """The file cannot be used at all (section 3)."""


class _Short(Exception):
    """A payload shorter than its fields."""


class Fields:
    """Little-endian fields of a payload, read in order (1.3)."""

    def __init__(self, data: memoryview) -> None:
        self.data, self.pos = data, 0

    def get(self, fmt: str) -> tuple[int, ...]:
        s = struct.Struct("<" + fmt)
        if self.pos + s.size > len(self.data):
            raise _Short
        self.pos += s.size
        return s.unpack_from(self.data, self.pos - s.size)

    def text(self) -> str:
        (n,) = self.get("I")
        if self.pos + n > len(self.data):
            raise _Short
        self.pos += n
        return bytes(self.data[self.pos - n:self.pos]).decode("utf-8", "surrogateescape")


@dataclass
class Chunk:
    tid: int
    count: int
    first_index: int
    frame: memoryview        # the zstd frame (and whatever follows it)
    narrow: bool = False     # 2.2: the frame holds u16 block ids


@dataclass
class TraceFile:
    path: str
    encoding: int = 0
    mode: int = 0
    backend: str = ""
    argv: list[str] = field(default_factory=list)
    chunks: dict[int, list[Chunk]] = field(default_factory=dict)
    gap_records: list[tuple[int, int, int, str]] = field(default_factory=list)
    thread_records: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # kept, written, lost
    modules: list[tuple[int, int, int, str, int]] = field(default_factory=list)    # start, end, bias, path, pid
    notes: list[str] = field(default_factory=list)
    end_pid: int | None = None
    truncated: bool = False
    table: np.ndarray | None = None
    flags: int = 0           # 1.2: of the last record read whole

    def __post_init__(self) -> None:
        fd = os.open(self.path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            self.map = mmap.mmap(fd, 0, access=mmap.ACCESS_READ) if size else b""
        finally:
            os.close(fd)
        self.data = memoryview(self.map)
        self._read()

    # -- sections 1-3: the records -------------------------------------------------------

    def _record(self, pos: int) -> tuple[int, memoryview] | str:
        """The (type, payload) of a whole record with a good CRC at ``pos``, or why not."""
        if pos + 16 > len(self.data):
            return "short"
        sync, rtype, self.flags, length, crc = struct.unpack_from("<4sHHII", self.data, pos)
        if sync != SYNC or length > MAX_RECORD:
            return "bad"
        if pos + 16 + length > len(self.data):
            return "short"
        payload = self.data[pos + 16:pos + 16 + length]
        if zlib.crc32(payload, zlib.crc32(self.data[pos + 4:pos + 12])) != crc:
            return "bad"
        return rtype, payload

    def _read(self) -> None:
        d = self.data
        if len(d) == 0:
            raise FormatError("empty")
        if not MAGIC.startswith(bytes(d[:8])):
            raise FormatError("not a trace file")
        if len(d) < 16:
            raise FormatError("truncated header")
        _, version, _ = struct.unpack_from("<8sII", d)
        if version > VERSION:
            raise FormatError(f"format version {version}")
        if version < 1:
            raise FormatError("corrupt header")
        head = self._record(16)
        if head == "short":
            raise FormatError("truncated header")
        if isinstance(head, str) or head[0] != HEADER:
            raise FormatError("corrupt header")
        try:
            f = Fields(head[1])
            self.encoding, self.mode, record_size, _cap, _chunk, _pid, _start = f.get("HHIQIIQ")
            self.backend, _writer = f.text(), f.text()
            self.argv = [f.text() for _ in range(f.get("I")[0])]
        except _Short:
            raise FormatError("corrupt header") from None
        if self.encoding not in RECORD_SIZE:
            raise FormatError(f"unknown encoding {self.encoding}")
        if record_size != RECORD_SIZE[self.encoding]:
            raise FormatError("corrupt header")
        self.record_size = record_size
        parts: list[tuple[int, np.ndarray]] = []
        pos, budget, ended = 16 + 16 + len(head[1]), 8 * len(d), False
        while pos < len(d):
            found = self._record(pos)
            if isinstance(found, str):        # 3: find the next intact record
                nxt, why = pos, found
                while True:
                    last, nxt = nxt, self.map.find(SYNC, nxt + 1)
                    budget -= (nxt - last if nxt > 0 else len(d) - last) + 16
                    if nxt < 0 or budget <= 0 or not isinstance(self._record(nxt), str):
                        break
                if nxt < 0 or budget <= 0:
                    self.truncated = self.truncated or why == "short" or budget <= 0
                    self.notes.append(f"damaged from byte {pos}")
                    break
                self.notes.append(f"damaged bytes {pos}-{nxt}")
                pos = nxt
                continue
            rtype, payload = found
            try:
                self._take(rtype, payload, parts)
            except (_Short, ValueError, TypeError, zstandard.ZstdError):
                self.notes.append(f"damaged record at {pos}")
            pos += 16 + len(payload)
            if rtype == END:
                ended = True
                break
        if not ended:
            self.truncated = True
        self.table = _assemble(parts, self.notes)
        self.columns = columns(self.table)

    def _take(self, rtype: int, payload: memoryview, parts: list[tuple[int, np.ndarray]]) -> None:
        f = Fields(payload)
        if rtype == CHUNK:                                  # 2.2
            tid, count, first, _first_ns, _last_ns = f.get("IIQQQ")
            body = payload[32:]
            narrow, size = self.flags == NARROW, count * self.record_size
            if not (0 < tid < 1 << 32 and 0 < size <= MAX_CHUNK and first < 1 << 62
                    and self.flags in (0, NARROW) and (not narrow or self.encoding == BLOCKID)
                    and zstandard.frame_content_size(body) == (count * 2 if narrow else size)):
                raise ValueError("bad chunk")
            self.chunks.setdefault(tid, []).append(Chunk(tid, count, first, body, narrow))
        elif rtype == GAP:                                  # 2.3
            tid, _, index, count = f.get("IIQQ")
            self.gap_records.append((tid, index, count, f.text()))
        elif rtype == THREAD:                               # 2.7
            tid, _, kept, written, lost, _waits = f.get("IIQQQQ")
            self.thread_records[tid] = (kept, written, lost)  # the last holds, in the first's place
        elif rtype == MODULE:                               # 2.4
            start, end, bias = f.get("QQQ")
            path, _build_id = f.text(), f.text()
            for _ in range(f.get("I")[0]):
                f.get("QQQ"), f.text(), f.text()
            pid = f.get("I")[0] if len(f.data) - f.pos >= 4 else 0  # appended later
            self.modules.append((start, end, bias, path, pid))
        elif rtype == NOTE:                                 # 2.6
            self.notes.append(bytes(payload).decode("utf-8", "surrogateescape"))
        elif rtype == END:                                  # 2.8
            self.end_pid = f.get("QI")[1]
        elif rtype == BLOCKS:                               # 2.5
            first_id, count, row_size, n = f.get("QQII")
            names, formats, offsets = [], [], []
            for _ in range(n):
                names.append(f.text()), formats.append(f.text()), offsets.append(f.get("I")[0])
            nbytes = count * row_size
            body = payload[f.pos:]
            if not 0 < nbytes <= MAX_CHUNK or zstandard.frame_content_size(body) != nbytes:
                raise ValueError("bad block table record")
            if any(not fm.lstrip("(0123456789,)<>|=")[:1] in set("biufcSV?") or "O" in fm
                   for fm in formats):
                raise ValueError("not a plain field")
            dtype = np.dtype(formats[0]) if names == [""] else np.dtype(
                {"names": names, "formats": formats, "offsets": offsets, "itemsize": row_size})
            if dtype.itemsize != row_size:
                raise ValueError("bad layout")
            raw = _inflate(body, nbytes)
            if raw is None:
                raise ValueError("short block table record")
            parts.append((first_id, np.frombuffer(raw, dtype)))
        # HEADER again (ignored), PROCESS, STACK and unknown types: not needed for branches

    # -- section 4: branches and gaps ----------------------------------------------------

    def thread_order(self) -> list[int]:
        """4.1: THREAD records first, then tids of chunks, each once."""
        return list(dict.fromkeys([*self.thread_records, *self.chunks]))

    def _chosen(self, tid: int) -> list[Chunk]:
        """4.1: the thread's chunks in order, without those that overlap."""
        chosen, pos = [], 0
        for c in sorted(self.chunks.get(tid, []), key=lambda c: c.first_index):
            if c.first_index >= pos:
                chosen.append(c)
                pos = c.first_index + c.count
        return chosen

    def pieces(self, tid: int) -> Iterator[np.ndarray | tuple[int, int]]:
        """The thread's runs and holes in order: arrays of BRANCH (one per good chunk) and
        holes as (first record, count) (4.1)."""
        pos, carry = 0, None      # carry: the last block id of the run so far
        for c in self._chosen(tid):
            if c.first_index > pos:
                yield (pos, c.first_index - pos)
                carry = None
            pos = c.first_index + c.count
            raw = _inflate(c.frame, c.count * (2 if c.narrow else self.record_size))
            if raw is None:
                yield (c.first_index, c.count)
                carry = None
                continue
            if self.encoding == FROMTO:
                rec = np.frombuffer(raw, FROMTO_DTYPE)
                out = np.empty(len(rec), BRANCH)
                out["from"], out["to"], out["kind"] = rec["from"], rec["to"], rec["kind"]
            else:
                ids = np.frombuffer(raw, "<u2" if c.narrow else "<u4").astype("<u4")
                seq = ids if carry is None else np.concatenate([[carry], ids]).astype("<u4")
                carry = int(ids[-1])
                out = decode_ids(seq, self.columns)
            out["kind"][out["kind"] > LAST_KIND] = OTHER           # 4.2
            yield out
        kept = self.thread_records.get(tid, (0, 0, 0))[0]
        if kept > pos:
            yield (pos, kept - pos)

    def thread(self, tid: int) -> tuple[np.ndarray, list[tuple[int, int, str]], int, int]:
        """4.4 and 4.5: the thread's branches, gaps (index, count, reason), written, lost."""
        arrays: list[np.ndarray] = []
        holes: list[tuple[int, int, int]] = []       # first record, count, branch index
        n = records = 0
        for p in self.pieces(tid):
            if isinstance(p, tuple):
                records = p[0] + p[1]
                if holes and holes[-1][2] == n and holes[-1][0] + holes[-1][1] == p[0]:
                    holes[-1] = (holes[-1][0], holes[-1][1] + p[1], n)
                else:
                    holes.append((p[0], p[1], n))
            else:
                arrays.append(p)
                n += len(p)
        branches = np.concatenate(arrays) if arrays else np.zeros(0, BRANCH)
        gaps = []
        for g_tid, index, count, reason in self.gap_records:
            if g_tid == tid:
                moved = index - sum(min(c, index - s) for s, c, _ in holes if s <= index)
                gaps.append((min(moved, n), count, reason))
        gaps += [(at, c, CORRUPT) for _, c, at in holes]
        missing = sum(c for _, c, _ in holes)
        if tid in self.thread_records:
            _, written, lost = self.thread_records[tid]
            return branches, gaps, written, lost + missing
        ends = [c.first_index + c.count for c in self._chosen(tid)]
        return branches, gaps, max([records, *ends]), missing

    def other_gaps(self) -> list[tuple[int, int, int, str]]:
        """4.5: GAP records of tids that are no thread of the file."""
        threads = set(self.thread_order())
        return [g for g in self.gap_records if g[0] not in threads]


def columns(table: np.ndarray | None) -> dict[str, np.ndarray] | None:
    """The block table's columns decode uses, each with one more row (all 0) that
    stands for every id past the table (4.3); None without rows."""
    if table is None or len(table) == 0:
        return None
    return {name: np.append(table[name], 0).astype(np.uint8 if name in ("kind", "flags")
                                                    else np.uint64)
            for name in ("start", "last", "end", "kind", "flags")}


def decode_ids(seq: np.ndarray, col: dict[str, np.ndarray] | None) -> np.ndarray:
    """4.3: the branches of consecutive block ids ``seq`` (the pairing rule), with the
    block table's columns ``col`` (one more row, all 0: every id past the table)."""
    if len(seq) < 2 or col is None:
        return np.zeros(0, BRANCH)
    row = np.minimum(seq.astype(np.intp), len(col["start"]) - 1)
    flags, start = col["flags"].take(row), col["start"].take(row)
    fp, fc = flags[:-1], flags[1:]
    # 1. both known (VALID) and 2. not both FOREIGN
    ok = ((fp & fc) & np.uint8(VALID | FOREIGN)) == VALID
    ok &= start[1:] != col["end"].take(row[:-1])                   # 3. no fall-through
    hooked = np.flatnonzero(ok & ((fp & np.uint8(HOOKED)) != 0))   # 4. no hook resume
    ok[hooked[(start[hooked] <= start[hooked + 1])
              & (start[hooked + 1] <= start[hooked] + np.uint64(HOOK_RESUME_SPAN))]] = False
    at = np.flatnonzero(ok)
    out = np.empty(len(at), BRANCH)
    out["from"] = col["last"].take(row[at])
    out["to"] = start[at + 1]
    out["kind"] = np.where((fc[at] & np.uint8(ASYNC)) != 0, INTERRUPT, col["kind"].take(row[at]))
    return out


_DCTX = zstandard.ZstdDecompressor()


def _inflate(frame: memoryview, size: int) -> bytes | None:
    """The ``size`` bytes of the zstd frame at the start of ``frame``; None when it does
    not hold them (bytes after the frame are ignored: 1.3)."""
    try:
        with _DCTX.stream_reader(frame, read_across_frames=False) as r:
            out = r.read(size)
            while len(out) < size:
                more = r.read(size - len(out))
                if not more:
                    return None
                out += more
            return out
    except zstandard.ZstdError:
        return None


def _assemble(parts: list[tuple[int, np.ndarray]], notes: list[str]) -> np.ndarray | None:
    """2.5: the block table from its records."""
    if not parts:
        return None
    dtype = parts[0][1].dtype
    same = sorted((p for p in parts if p[1].dtype == dtype), key=lambda p: p[0])
    rows, have = [], 0
    for first, array in same:
        if first > have:
            break
        if first + len(array) > have:
            rows.append(array[have - first:])
            have = first + len(array)
    if have < max(f + len(a) for f, a in same) or len(same) < len(parts):
        notes.append(f"the block table is incomplete: only ids below {have} are known")
    return np.concatenate(rows) if rows else np.zeros(0, dtype)


def main(argv: list[str]) -> int:
    for path in argv:
        f = TraceFile(path)
        for tid in f.thread_order():
            branches, gaps, written, lost = f.thread(tid)
            kinds = np.bincount(branches["kind"], minlength=9)
            print(f"{path}: thread {tid}: {len(branches)} branches, kinds {kinds.tolist()}, "
                  f"gaps {gaps}, written {written}, lost {lost}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
