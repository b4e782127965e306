"""The trace file format in code: constants, record types, and the payload of each record.

A trace file is a 16-byte preamble (magic, format version) followed by records. Every
record has a 16-byte frame (sync marker, type, flags, payload length, CRC-32) and a
typed payload, so a reader can skip a record type it does not know and find the next
record after a damaged one. The byte layout is specified in docs/trace-format.md; if
this module and that page disagree, that is a bug.

Payloads are little-endian fields followed by length-prefixed strings. A reader ignores
bytes at the end of a payload that it does not know: fields can be appended to a record
without a version change. Only an incompatible change bumps :data:`VERSION`.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from enum import IntEnum

MAGIC = b"\x89BTR\r\n\x1a\n"
#: Trace file format version. Changelog:
#:   1 - first version: header, chunk, gap, module, blocks, note, thread and end records.
#:       Later, compatibly (no version change): the PROCESS record, and ``pid`` appended
#:       to THREAD and MODULE (a file without them holds one process).
#:   2 - a CHUNK record of block ids may hold them as 16-bit integers, flag 1 of its frame
#:       (chunkbody.NARROW). Version 1 files are read as before.
VERSION = 2

PREAMBLE = struct.Struct("<8sII")      # magic, version, reserved (0)
FRAME = struct.Struct("<4sHHII")       # sync, type, flags, length, crc32
SYNC = b"BTR\x1e"
#: The longest payload a record may have; a writer splits larger data over records.
MAX_RECORD_LENGTH = 64 << 20
#: The most bytes one chunk (or one block-table record) may decompress to.
MAX_CHUNK_BYTES = 16 << 20
#: What the writer aims for: raw bytes of records per chunk.
CHUNK_BYTES = 1 << 20
CHUNK_HEAD = struct.Struct("<IIQQQ")   # tid, count, first_index, first_ns, last_ns


class RecordType(IntEnum):
    """Record types. Values are in the file format: never renumber."""

    HEADER = 1
    CHUNK = 2
    GAP = 3
    MODULE = 4
    BLOCKS = 5
    NOTE = 6
    THREAD = 7
    END = 8
    PROCESS = 9
    STACK = 10          # tracefile/stacks.py


def frame(rtype: RecordType, payload: bytes, flags: int = 0) -> bytes:
    """One whole record: the frame, then ``payload``."""
    head = struct.pack("<HHI", rtype, flags, len(payload))
    crc = zlib.crc32(payload, zlib.crc32(head))
    return SYNC + head + struct.pack("<I", crc) + payload


def frame_crc(frame_bytes: bytes, payload: bytes | memoryview) -> int:
    """The CRC a record with this frame and payload must carry (type, flags, length,
    payload)."""
    return zlib.crc32(payload, zlib.crc32(frame_bytes[4:12]))


class Malformed(ValueError):
    """A payload shorter than its fields, or with a field out of range."""


class Packer:
    """Builds a payload."""

    def __init__(self) -> None:
        self.out = bytearray()

    def pack(self, fmt: str, *values: int) -> Packer:
        self.out += struct.pack("<" + fmt, *values)
        return self

    def blob(self, data: bytes) -> Packer:
        self.out += struct.pack("<I", len(data)) + data
        return self

    def text(self, value: str) -> Packer:
        return self.blob(value.encode("utf-8", "surrogateescape"))

    def done(self) -> bytes:
        return bytes(self.out)


class Unpacker:
    """Reads a payload; every read is checked against what is left."""

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def unpack(self, fmt: str) -> tuple[int, ...]:
        s = struct.Struct("<" + fmt)
        if self.pos + s.size > len(self.data):
            raise Malformed("payload too short")
        values = s.unpack_from(self.data, self.pos)
        self.pos += s.size
        return tuple(int(v) for v in values)

    def one(self, fmt: str) -> int:
        return self.unpack(fmt)[0]

    def blob(self) -> bytes:
        n = self.one("I")
        if n > len(self.data) - self.pos:
            raise Malformed("string longer than its record")
        out = bytes(self.data[self.pos:self.pos + n])
        self.pos += n
        return out

    def text(self) -> str:
        return self.blob().decode("utf-8", "surrogateescape")

    def rest(self) -> memoryview:
        return self.data[self.pos:]


@dataclass(frozen=True, slots=True)
class FileHeader:
    """The HEADER record: what is known when recording starts."""

    encoding: int                 # store Encoding value: 1 FROMTO, 2 BLOCKID
    mode: int                     # store StoreMode value: 1 ring, 2 stream
    record_size: int              # bytes per raw record
    capacity: int                 # per-thread buffer capacity, records
    chunk_records: int            # stream mode: records per store chunk; ring: 0
    pid: int                      # the target's pid if known at the start (attach), else 0
    start_ns: int                 # wall clock (CLOCK_REALTIME), ns since the Unix epoch
    backend: str
    writer: str                   # "branchtrace 0.1.0"
    argv: tuple[str, ...] = ()

    def encode(self) -> bytes:
        p = Packer().pack("HHIQIIQ", self.encoding, self.mode, self.record_size,
                          self.capacity, self.chunk_records, self.pid, self.start_ns)
        p.text(self.backend).text(self.writer).pack("I", len(self.argv))
        for arg in self.argv:
            p.text(arg)
        return p.done()

    @classmethod
    def decode(cls, data: bytes | memoryview) -> FileHeader:
        u = Unpacker(data)
        encoding, mode, record_size, capacity, chunk, pid, start = u.unpack("HHIQIIQ")
        backend, writer = u.text(), u.text()
        argc = u.one("I")
        if argc > len(u.rest()) // 4:
            raise Malformed("more arguments than the record holds")
        return cls(encoding, mode, record_size, capacity, chunk, pid, start, backend, writer,
                   tuple(u.text() for _ in range(argc)))


@dataclass(frozen=True, slots=True)
class ChunkHead:
    """The fixed part of a CHUNK record; the zstd frame of the raw records follows."""

    tid: int
    count: int                    # records in the chunk
    first_index: int              # records of this thread written to the file before it
    first_ns: int                 # no record of the chunk was produced before this time
    last_ns: int                  # ... nor after this one (when it was drained)

    def encode(self) -> bytes:
        return CHUNK_HEAD.pack(self.tid, self.count, self.first_index, self.first_ns,
                               self.last_ns)

    @classmethod
    def decode(cls, data: bytes | memoryview) -> ChunkHead:
        if len(data) < CHUNK_HEAD.size:
            raise Malformed("chunk record too short")
        return cls(*CHUNK_HEAD.unpack_from(data))


@dataclass(frozen=True, slots=True)
class ThreadInfo:
    """The THREAD record, written at the end: one per thread, in order of appearance."""

    tid: int
    kept: int                     # records of this thread in the file's chunks
    written: int                  # records the thread produced
    lost: int                     # records lost (overwritten by the ring, dropped, ...)
    producer_waits: int = 0
    pid: int = 0                  # the process it belongs to; 0: not said (the first)

    def encode(self) -> bytes:
        return Packer().pack("IIQQQQI", self.tid, 0, self.kept, self.written, self.lost,
                             self.producer_waits, self.pid).done()

    @classmethod
    def decode(cls, data: bytes | memoryview) -> ThreadInfo:
        u = Unpacker(data)
        tid, _, kept, written, lost, waits = u.unpack("IIQQQQ")
        pid = u.one("I") if len(u.rest()) >= 4 else 0
        return cls(tid, kept, written, lost, waits, pid)


#: END record flags: which optional fields hold a value.
END_CODE, END_SIGNAL, END_FAULT_ADDRESS, END_FAULT_PC, END_TID, END_CORE = (1 << i for i in range(6))


@dataclass(frozen=True, slots=True)
class EndInfo:
    """The END record: how the target ended; always the last record."""

    end_ns: int
    pid: int
    status: str                   # "exited", "signaled", "detached", ...
    code: int | None = None
    signal: int | None = None
    fault_address: int | None = None
    fault_pc: int | None = None
    tid: int | None = None
    core_dumped: bool = False

    def encode(self) -> bytes:
        return Packer().pack("QIIIiiQQ", self.end_ns, self.pid, self.tid or 0,
                             _end_flags(self), self.code or 0, self.signal or 0,
                             self.fault_address or 0, self.fault_pc or 0
                             ).text(self.status).done()

    @classmethod
    def decode(cls, data: bytes | memoryview) -> EndInfo:
        u = Unpacker(data)
        end_ns, pid, tid, flags, code, sig, address, pc = u.unpack("QIIIiiQQ")
        return cls(end_ns, pid, u.text(),
                   code if flags & END_CODE else None, sig if flags & END_SIGNAL else None,
                   address if flags & END_FAULT_ADDRESS else None,
                   pc if flags & END_FAULT_PC else None, tid if flags & END_TID else None,
                   bool(flags & END_CORE))


def _end_flags(e: EndInfo | ProcessRecord) -> int:
    return sum(bit for bit, value in (
        (END_CODE, e.code), (END_SIGNAL, e.signal), (END_FAULT_ADDRESS, e.fault_address),
        (END_FAULT_PC, e.fault_pc), (END_TID, e.tid)) if value is not None) \
        | (END_CORE if e.core_dumped else 0)


@dataclass(frozen=True, slots=True)
class ProcessRecord:
    """The PROCESS record: one process of the run (the first one first). Written when
    it is known and again when more is known; the last record of a pid holds. The
    exit fields are those of END (``status`` "running": not ended yet)."""

    pid: int
    ppid: int                     # 0: the first process (its parent is not traced)
    start_ns: int
    end_ns: int
    status: str
    code: int | None = None
    signal: int | None = None
    fault_address: int | None = None
    fault_pc: int | None = None
    tid: int | None = None
    core_dumped: bool = False
    argv: tuple[str, ...] = ()
    threads: tuple[int, ...] = ()

    def encode(self) -> bytes:
        p = Packer().pack("IIQQIIiiQQ", self.pid, self.ppid, self.start_ns, self.end_ns,
                          self.tid or 0, _end_flags(self), self.code or 0, self.signal or 0,
                          self.fault_address or 0, self.fault_pc or 0).text(self.status)
        p.pack("I", len(self.argv))
        for arg in self.argv:
            p.text(arg)
        p.pack("I", len(self.threads))
        for tid in self.threads:
            p.pack("I", tid)
        return p.done()

    @classmethod
    def decode(cls, data: bytes | memoryview) -> ProcessRecord:
        u = Unpacker(data)
        pid, ppid, start, end, tid, flags, code, sig, address, pc = u.unpack("IIQQIIiiQQ")
        status = u.text()
        argc = u.one("I")
        if argc > len(u.rest()) // 4:
            raise Malformed("more arguments than the record holds")
        argv = tuple(u.text() for _ in range(argc))
        n = u.one("I")
        if n > len(u.rest()) // 4:
            raise Malformed("more threads than the record holds")
        threads = u.unpack(f"{n}I") if n else ()
        if pid == 0:
            raise Malformed("process 0")
        return cls(pid, ppid, start, end, status,
                   code if flags & END_CODE else None, sig if flags & END_SIGNAL else None,
                   address if flags & END_FAULT_ADDRESS else None,
                   pc if flags & END_FAULT_PC else None, tid if flags & END_TID else None,
                   bool(flags & END_CORE), argv, tuple(threads))


@dataclass(frozen=True, slots=True)
class GapInfo:
    tid: int
    index: int
    count: int
    reason: str

    def encode(self) -> bytes:
        return Packer().pack("IIQQ", self.tid, 0, self.index, self.count).text(self.reason).done()

    @classmethod
    def decode(cls, data: bytes | memoryview) -> GapInfo:
        u = Unpacker(data)
        tid, _, index, count = u.unpack("IIQQ")
        return cls(tid, index, count, u.text())


@dataclass(frozen=True, slots=True)
class MappingInfo:
    start: int
    end: int
    offset: int
    perms: str
    path: str


@dataclass(frozen=True, slots=True)
class ModuleInfo:
    start: int
    end: int
    bias: int
    path: str
    build_id: str
    mappings: tuple[MappingInfo, ...] = field(default=())
    pid: int = 0                  # the process it is mapped in; 0: not said (the first)

    def encode(self) -> bytes:
        p = Packer().pack("QQQ", self.start, self.end, self.bias)
        p.text(self.path).text(self.build_id).pack("I", len(self.mappings))
        for m in self.mappings:
            p.pack("QQQ", m.start, m.end, m.offset).text(m.perms).text(m.path)
        return p.pack("I", self.pid).done()

    @classmethod
    def decode(cls, data: bytes | memoryview) -> ModuleInfo:
        u = Unpacker(data)
        start, end, bias = u.unpack("QQQ")
        path, build_id, n = u.text(), u.text(), u.one("I")
        if n > len(u.rest()) // 32:
            raise Malformed("more mappings than the record holds")
        maps = []
        for _ in range(n):
            s, e, o = u.unpack("QQQ")
            maps.append(MappingInfo(s, e, o, u.text(), u.text()))
        pid = u.one("I") if len(u.rest()) >= 4 else 0
        return cls(start, end, bias, path, build_id, tuple(maps), pid)
