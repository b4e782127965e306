"""Read a trace file's records: :func:`scan` checks the framing and collects every record.

Only what makes the whole file unusable raises (:class:`TraceFormatError`, one line):
a missing or unreadable file, a directory, a file that is not a trace, a truncated or
corrupt header, a newer format version. Anything after the header is read as far as it
goes: a damaged record is skipped (the reader finds the next one by its sync marker and
CRC), a file cut short is read up to its last whole record, and both are reported in
:attr:`TraceFile.problems`.

Every length is checked against the bytes left in the file and a fixed maximum before
anything is allocated for it; a chunk is accepted only when its zstd frame declares the
size its header promises, so decompression never allocates more than that.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zstandard

from .. import progress
from ..errors import TraceFormatError
from ..model import StackSnapshot
from ..store import RECORD_DTYPES, Encoding
from .chunkbody import NARROW, stored_size, valid_flags
from .stacks import decode_stack
from .blocksrec import BlocksHead, dtype_from_fields
from .format import (
    CHUNK_HEAD,
    FRAME,
    MAGIC,
    MAX_CHUNK_BYTES,
    MAX_RECORD_LENGTH,
    PREAMBLE,
    SYNC,
    VERSION,
    ChunkHead,
    EndInfo,
    FileHeader,
    GapInfo,
    Malformed,
    ModuleInfo,
    ProcessRecord,
    RecordType,
    ThreadInfo,
    frame_crc,
)

_WINDOW = 1 << 20          # bytes read at a time when looking for the next record
_MAX_PROBLEMS = 8          # damaged places listed one by one; the rest are counted


class Bodies:
    """The trace file, kept open so that chunk bodies are read when a reader asks for
    them: :func:`scan` checks each chunk and keeps none, so memory does not grow with
    the file. A body is read again with its record's frame, which must be the one the
    scan checked (sync, length, CRC); if the file changed since, the body is empty and
    the chunk reads as corrupt, never as other data. The descriptor closes with the
    object (the last :class:`Chunk` of the file gone)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self.fd = path, fd

    def __del__(self) -> None:
        try:
            os.close(self.fd)
        except (OSError, AttributeError):
            pass

    def body(self, offset: int, length: int, crc: int) -> bytes:
        """The body of the chunk record at ``offset`` (payload ``length`` bytes, frame
        CRC ``crc``), or b"" when it is no longer that record."""
        n = FRAME.size + length
        parts, got = [], 0
        while got < n:
            try:
                part = os.pread(self.fd, n - got, offset + got)
            except InterruptedError:
                continue
            except OSError:
                return b""
            if not part:
                return b""
            parts.append(part)
            got += len(part)
        raw = b"".join(parts)
        sync, _rtype, _flags, size, found = FRAME.unpack_from(raw)
        frame, payload = raw[:FRAME.size], memoryview(raw)[FRAME.size:]
        if sync != SYNC or size != length or found != crc or frame_crc(frame, payload) != crc:
            return b""
        return raw[FRAME.size + CHUNK_HEAD.size:]


@dataclass(slots=True)
class Chunk:
    head: ChunkHead
    offset: int            # of the record in the file
    size: int              # bytes of its body: the zstd frame of head.count raw records
    crc: int               # its record's frame CRC (checked again when the body is read)
    source: Bodies | bytes  # where the body is read from (or the body itself)
    flags: int = 0         # its frame's flags: chunkbody.NARROW, ids stored as 16 bits

    @property
    def narrow(self) -> bool:
        return bool(self.flags & NARROW)

    @property
    def body(self) -> bytes:
        """The zstd frame of ``head.count`` raw records, read from the file now (b""
        when the file no longer holds it)."""
        if isinstance(self.source, bytes):
            return self.source
        return self.source.body(self.offset, CHUNK_HEAD.size + self.size, self.crc)


@dataclass
class TraceFile:
    """Everything readable in a trace file, not yet decoded."""

    path: Path
    header: FileHeader
    chunks: dict[int, list[Chunk]] = field(default_factory=lambda: defaultdict(list))
    gaps: list[GapInfo] = field(default_factory=list)
    modules: list[ModuleInfo] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    threads: list[ThreadInfo] = field(default_factory=list)
    #: PROCESS records by pid, in order of first appearance (the last record of a pid)
    processes: dict[int, ProcessRecord] = field(default_factory=dict)
    #: STACK records: the stack copy of each thread that died of a signal, by (pid, tid)
    stacks: dict[tuple[int, int], StackSnapshot] = field(default_factory=dict)
    blocks: np.ndarray | None = None
    end: EndInfo | None = None
    truncated: bool = False
    problems: list[str] = field(default_factory=list)   # what the reader had to skip

    @property
    def encoding(self) -> Encoding:
        return Encoding(self.header.encoding)


def _open(path: Path) -> tuple[int, int]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise TraceFormatError(f"{path}: no such file") from None
    except PermissionError:
        raise TraceFormatError(f"{path}: permission denied") from None
    except OSError as err:
        raise TraceFormatError(f"{path}: cannot open: {err.strerror or err}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise TraceFormatError(f"{path}: is {what}, not a trace file")
    return fd, st.st_size


class _Scanner:
    def __init__(self, path: Path, fd: int, size: int) -> None:
        self.path, self.fd, self.size = path, fd, size
        self.budget = 8 * size + (1 << 20)   # bytes we may read while resynchronizing
        self.damaged: list[tuple[int, int]] = []
        self.unknown = 0
        self.crc = 0                            # of the last record read whole
        self.flags = 0                          # ... and its frame's flags
        self.bodies = Bodies(path, fd)          # owns fd from now on

    def read(self, offset: int, n: int) -> bytes:
        n = max(0, min(n, self.size - offset))
        parts, got = [], 0
        while got < n:
            try:
                part = os.pread(self.fd, n - got, offset + got)
            except OSError as err:
                if err.errno == errno.EINTR:
                    continue
                raise TraceFormatError(f"{self.path}: cannot read: {err.strerror or err}") from None
            if not part:
                break
            parts.append(part)
            got += len(part)
        return b"".join(parts)

    def record_at(self, pos: int) -> tuple[int, bytes] | str:
        """The (type, payload) of a whole, intact record at ``pos``, or why not:
        "short" (the file ends inside it) or "bad". ``self.crc``: the record's CRC."""
        raw = self.read(pos, FRAME.size)
        if len(raw) < FRAME.size:
            return "short"
        sync, rtype, flags, length, crc = FRAME.unpack(raw)
        if sync != SYNC or length > MAX_RECORD_LENGTH:
            return "bad"
        if pos + FRAME.size + length > self.size:
            return "short"
        payload = self.read(pos + FRAME.size, length)
        if frame_crc(raw, payload) != crc:
            return "bad"
        self.crc, self.flags = crc, flags
        return rtype, payload

    def resync(self, start: int) -> int | None:
        """The offset of the next intact record at or after ``start``, if any."""
        pos = start
        while pos < self.size and self.budget > 0:
            window = self.read(pos, _WINDOW + len(SYNC) - 1)
            self.budget -= len(window)
            i = window.find(SYNC)
            while i >= 0:
                found = self.record_at(pos + i)
                if not isinstance(found, str):
                    return pos + i
                length = struct.unpack_from("<I", window, i + 8)[0] if i + 12 <= len(window) else 0
                self.budget -= FRAME.size + min(length, self.size - pos - i)
                if self.budget <= 0:
                    return None
                i = window.find(SYNC, i + 1)
            pos += _WINDOW
        return None


def scan(path: str | os.PathLike[str]) -> TraceFile:
    """Read the records of the trace file at ``path`` (raises :class:`TraceFormatError`
    only when nothing of it can be used)."""
    p = Path(path)
    fd, size = _open(p)
    tf = _scan(_Scanner(p, fd, size))        # the scanner's Bodies close fd when unused
    if progress.active():        # what a reader of the file will decompress
        progress.expect(sum(c.size for cs in tf.chunks.values() for c in cs))
    return tf


def _header(s: _Scanner) -> FileHeader:
    p = s.path
    if s.size == 0:
        raise TraceFormatError(f"{p}: is empty, not a trace file")
    pre = s.read(0, PREAMBLE.size)
    if not MAGIC.startswith(pre[:len(MAGIC)]):
        raise TraceFormatError(f"{p}: not a branchtrace trace file")
    if len(pre) < PREAMBLE.size:
        raise TraceFormatError(f"{p}: truncated header: the file has only {s.size} bytes")
    _, version, _ = PREAMBLE.unpack(pre)
    if version > VERSION:
        raise TraceFormatError(f"{p}: made by a newer branchtrace: format version {version}, "
                               f"this one reads up to {VERSION}")
    if version < 1:
        raise TraceFormatError(f"{p}: corrupt header (format version {version})")
    found = s.record_at(PREAMBLE.size)
    if found == "short":
        raise TraceFormatError(f"{p}: truncated header: the file has only {s.size} bytes")
    if isinstance(found, str) or found[0] != RecordType.HEADER:
        raise TraceFormatError(f"{p}: corrupt header")
    try:
        header = FileHeader.decode(found[1])
    except Malformed:
        raise TraceFormatError(f"{p}: corrupt header") from None
    if header.encoding not in {int(e) for e in Encoding}:
        raise TraceFormatError(f"{p}: records of an unknown encoding ({header.encoding}): "
                               f"made by a newer branchtrace?")
    if header.record_size != RECORD_DTYPES[Encoding(header.encoding)].itemsize:
        raise TraceFormatError(f"{p}: corrupt header (record size {header.record_size})")
    return header


def _scan(s: _Scanner) -> TraceFile:
    tf = TraceFile(s.path, _header(s))
    blocks: list[tuple[BlocksHead, np.ndarray]] = []
    pos = PREAMBLE.size + FRAME.size + FRAME.unpack(s.read(PREAMBLE.size, FRAME.size))[3]
    while pos < s.size:
        found = s.record_at(pos)
        if isinstance(found, str):
            nxt = s.resync(pos + 1)
            if nxt is None:
                if found == "short" or s.budget <= 0:
                    tf.truncated = True
                    tf.problems.append(_cut_note(s, pos))
                else:
                    s.damaged.append((pos, s.size))
                break
            s.damaged.append((pos, nxt))
            pos = nxt
            continue
        rtype, payload = found
        try:
            _take(tf, rtype, payload, pos, blocks, s)
        except (Malformed, zstandard.ZstdError, ValueError, struct.error):
            s.damaged.append((pos, pos + FRAME.size + len(payload)))
        pos += FRAME.size + len(payload)
        if rtype == RecordType.END:
            if pos < s.size:
                tf.problems.append(f"{s.size - pos} bytes after the end record were ignored")
            break
    if tf.end is None and not tf.truncated:
        tf.truncated = True
        tf.problems.append("the file has no end record: the recording did not finish "
                           "(was branchtrace killed?)")
    if s.damaged:
        where = ", ".join(f"{a}-{b}" for a, b in s.damaged[:_MAX_PROBLEMS])
        more = f" and {len(s.damaged) - _MAX_PROBLEMS} more" if len(s.damaged) > _MAX_PROBLEMS else ""
        tf.problems.append(f"{len(s.damaged)} damaged part(s) of the file were skipped "
                           f"(bytes {where}{more})")
    if s.unknown:
        tf.problems.append(f"{s.unknown} record(s) of types this branchtrace does not know "
                           f"were skipped")
    tf.blocks = _assemble_blocks(blocks, tf.problems)
    return tf


def _cut_note(s: _Scanner, pos: int) -> str:
    if s.budget <= 0:
        return f"gave up reading at byte {pos}: too much of the file is damaged"
    return (f"the file is cut short at byte {s.size}, in the middle of a record: the "
            f"recording did not finish (was branchtrace killed?)")


def _take(tf: TraceFile, rtype: int, payload: bytes, pos: int,
          blocks: list[tuple[BlocksHead, np.ndarray]], s: _Scanner) -> None:
    if rtype == RecordType.CHUNK:
        head = ChunkHead.decode(payload)
        size = stored_size(head.count, tf.header.record_size, s.flags)
        body = payload[CHUNK_HEAD.size:]
        if not 0 < head.tid < 1 << 32 or not 0 < size <= MAX_CHUNK_BYTES \
                or head.first_index >= 1 << 62 or zstandard.frame_content_size(body) != size \
                or not valid_flags(s.flags, tf.header.record_size):
            raise Malformed("bad chunk")
        tf.chunks[head.tid].append(Chunk(head, pos, len(body), s.crc, s.bodies, s.flags))
    elif rtype == RecordType.GAP:
        tf.gaps.append(GapInfo.decode(payload))
    elif rtype == RecordType.MODULE:
        tf.modules.append(ModuleInfo.decode(payload))
    elif rtype == RecordType.NOTE:
        tf.notes.append(payload.decode("utf-8", "surrogateescape"))
    elif rtype == RecordType.THREAD:
        tf.threads.append(ThreadInfo.decode(payload))
    elif rtype == RecordType.END:
        tf.end = EndInfo.decode(payload)
    elif rtype == RecordType.PROCESS:
        record = ProcessRecord.decode(payload)
        tf.processes[record.pid] = record
    elif rtype == RecordType.STACK:
        pid, snapshot = decode_stack(payload)
        tf.stacks[(pid, snapshot.tid)] = snapshot
    elif rtype == RecordType.BLOCKS:
        bhead, frame_body = BlocksHead.decode(payload)
        nbytes = bhead.count * bhead.row_size
        if not 0 < nbytes <= MAX_CHUNK_BYTES or zstandard.frame_content_size(frame_body) != nbytes:
            raise Malformed("bad block table record")
        dtype = dtype_from_fields(list(bhead.fields), bhead.row_size)
        raw = _inflate(frame_body, nbytes)
        blocks.append((bhead, np.frombuffer(raw, dtype)))
    elif rtype == RecordType.HEADER:
        tf.problems.append(f"a second header (at byte {pos}) was ignored")
    else:
        s.unknown += 1


def _inflate(body: bytes | memoryview, size: int) -> bytes:
    """The ``size`` bytes the zstd frame at the start of ``body`` holds, decompressed a
    piece at a time: memory grows with what the frame really holds, not with what its
    header claims."""
    out = bytearray()
    with zstandard.ZstdDecompressor().stream_reader(body, read_across_frames=False) as r:
        while len(out) < size:
            piece = r.read(min(_WINDOW, size - len(out)))
            if not piece:
                raise Malformed("bad block table record")
            out += piece
    return bytes(out)


def _assemble_blocks(parts: list[tuple[BlocksHead, np.ndarray]],
                     problems: list[str]) -> np.ndarray | None:
    """The block table from its records: rows from id 0 on, up to the first missing one."""
    if not parts:
        return None
    dtype = parts[0][1].dtype
    rows = sorted(((h.first_id, a) for h, a in parts if a.dtype == dtype), key=lambda r: r[0])
    kept: list[np.ndarray] = []
    expected = 0
    for first, array in rows:
        if first > expected:
            break
        if first + len(array) > expected:
            kept.append(array[expected - first:])
            expected = first + len(array)
    total = max(first + len(a) for first, a in rows)
    if expected < total or len(rows) < len(parts):
        problems.append(f"the block table is incomplete: only ids 0-{expected - 1} are known; "
                        f"branches through other blocks are not shown")
    return np.concatenate(kept) if kept else np.zeros(0, dtype)
