"""The store's file format in code: constants, enums, numpy dtypes and configuration.

The constants and dtypes below are the byte layout specified in docs/store-format.md:
a 4096-byte header, a table of 64-byte thread entries, then one page-aligned region of
``capacity`` records per thread. :class:`StoreConfig` is what a store is built from;
:class:`ThreadStatus` and :class:`StoreStatus` report a thread entry and a whole store.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

import numpy as np

from ..errors import UsageError
from .sizes import Size

MAGIC = b"BTSTORE\0"
#: Store format version. Changelog: 1 - first version (ring and stream, FROMTO and BLOCKID).
VERSION = 1
PAGE = 4096
HEADER_SIZE = PAGE
THREAD_ENTRY_SIZE = 64
DEFAULT_RING_RECORDS = 65536
#: stream mode's default buffer per thread, in records of 4 bytes (4 MiB); records of another
#: size get the same bytes. 1 MiB made a fast producer wait for the consumer's 1 ms poll
#: (jq 5.9 s against 3.9 s, sqlite3 7.9 s against 6.0 s: docs/benchmarks.md)
DEFAULT_STREAM_RECORDS = 16 * 65536
DEFAULT_STREAM_BYTES = 4 * DEFAULT_STREAM_RECORDS
MAX_CHUNK_RECORDS = 65536
DEFAULT_MAX_THREADS = 1024


class StoreMode(IntEnum):
    """What happens when a thread's buffer is full. Values are in the file format."""

    RING = 1    # overwrite the oldest record, count it as lost
    STREAM = 2  # wait for the consumer to free a chunk: nothing is lost


class Encoding(IntEnum):
    """The raw record format of a store. Values are in the file format."""

    FROMTO = 1   # 24 bytes: from_ip, to_ip, kind
    BLOCKID = 2  # 4 bytes: a block id, resolved through the backend's block table


class ThreadState(IntEnum):
    FREE = 0     # no thread; the slot's region (if any) is reused by the next thread
    ACTIVE = 1
    EXITED = 2   # the thread is gone; its records are still there until released


FROMTO_DTYPE = np.dtype([("from_ip", "<u8"), ("to_ip", "<u8"), ("kind", "u1"), ("pad", "V7")])
BLOCKID_DTYPE = np.dtype("<u4")
RECORD_DTYPES: dict[Encoding, np.dtype] = {
    Encoding.FROMTO: FROMTO_DTYPE,
    Encoding.BLOCKID: BLOCKID_DTYPE,
}

_HEADER_FIELDS = [  # (name, format, byte offset); bytes 96..4095 are reserved, zero
    ("magic", "S8", 0), ("version", "<u4", 8), ("header_size", "<u4", 12),
    ("mode", "<u4", 16), ("encoding", "<u4", 20), ("record_size", "<u4", 24),
    ("max_threads", "<u4", 28), ("capacity", "<u8", 32), ("chunk_records", "<u4", 40),
    ("nchunks", "<u4", 44), ("thread_table_offset", "<u8", 48), ("region_bytes", "<u8", 56),
    ("nthreads", "<u4", 64), ("thread_entry_size", "<u4", 68), ("memory_limit", "<u8", 72),
    ("created_ns", "<u8", 80), ("regions_offset", "<u8", 88),
]
HEADER_DTYPE = np.dtype({
    "names": [f[0] for f in _HEADER_FIELDS], "formats": [f[1] for f in _HEADER_FIELDS],
    "offsets": [f[2] for f in _HEADER_FIELDS], "itemsize": HEADER_SIZE,
})
THREAD_DTYPE = np.dtype([
    ("tid", "<u4"), ("state", "<u4"), ("region_offset", "<u8"), ("written", "<u8"),
    ("consumed", "<u8"), ("lost_acc", "<u8"), ("producer_waits", "<u8"),
    ("slot_cursor", "<u8"), ("reserved_end", "<u8"),  # producer scratch, see the format doc
])
# Indices of the 8-byte words of a thread entry, for the producer's cached u8 view.
_WRITTEN, _CONSUMED, _WAITS = 2, 3, 5


def _page_round(n: int) -> int:
    return -(-n // PAGE) * PAGE


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """What :meth:`Store.create` builds. ``memory_limit`` is the user's, in bytes.

    In stream mode ``capacity_records`` must be a multiple of ``chunk_records``; use
    :meth:`from_size` to get that right from a ``--buffer-size``.
    """

    mode: StoreMode = StoreMode.RING
    encoding: Encoding = Encoding.FROMTO
    capacity_records: int = DEFAULT_RING_RECORDS
    chunk_records: int = 0
    memory_limit: int | None = None
    max_threads: int = DEFAULT_MAX_THREADS

    def __post_init__(self) -> None:
        if self.capacity_records < 1:
            raise UsageError(
                f"buffer capacity must be at least 1 record, not {self.capacity_records}"
            )
        if not 1 <= self.max_threads <= 1 << 20:
            raise UsageError(
                f"max_threads must be between 1 and {1 << 20}, not {self.max_threads}"
            )
        if self.mode == StoreMode.STREAM and (
            self.chunk_records < 1 or self.capacity_records % self.chunk_records
            or self.chunk_records >= 1 << 32 or self.nchunks >= 1 << 32
        ):
            raise UsageError(
                f"stream capacity {self.capacity_records} is not a whole number of chunks "
                f"of {self.chunk_records} records"
            )

    @classmethod
    def from_size(
        cls, size: Size | None, mode: StoreMode = StoreMode.RING,
        encoding: Encoding = Encoding.FROMTO, *, memory_limit: int | None = None,
        max_threads: int = DEFAULT_MAX_THREADS,
    ) -> StoreConfig:
        """A config from a ``--buffer-size`` (None: the default for the mode).

        Ring mode keeps exactly the records asked for. Stream mode splits them into
        chunks of ``min(65536, records // 2)`` records, at least two chunks, and rounds
        the capacity down to whole chunks.
        """
        record_size = RECORD_DTYPES[encoding].itemsize
        if mode == StoreMode.RING:
            records = size.records(record_size) if size else DEFAULT_RING_RECORDS
            return cls(mode, encoding, records, 0, memory_limit, max_threads)
        records = size.records(record_size) if size else DEFAULT_STREAM_BYTES // record_size
        chunk = min(MAX_CHUNK_RECORDS, max(1, records // 2))
        nchunks = max(2, records // chunk)
        return cls(mode, encoding, chunk * nchunks, chunk, memory_limit, max_threads)

    @property
    def record_size(self) -> int:
        return int(RECORD_DTYPES[self.encoding].itemsize)

    @property
    def nchunks(self) -> int:
        return self.capacity_records // self.chunk_records if self.mode == StoreMode.STREAM else 0

    @property
    def region_bytes(self) -> int:
        return _page_round(self.capacity_records * self.record_size)

    @property
    def regions_offset(self) -> int:
        return _page_round(HEADER_SIZE + self.max_threads * THREAD_ENTRY_SIZE)


@dataclass(frozen=True, slots=True)
class ThreadStatus:
    tid: int
    state: ThreadState
    held: int
    written: int
    consumed: int
    lost: int
    producer_waits: int


@dataclass(frozen=True, slots=True)
class StoreStatus:
    path: Path
    mode: StoreMode
    encoding: Encoding
    capacity: int
    chunk_records: int
    nchunks: int
    memory_used: int
    memory_limit: int
    threads: tuple[ThreadStatus, ...]

    @property
    def held(self) -> int:
        return sum(t.held for t in self.threads)

    @property
    def lost(self) -> int:
        return sum(t.lost for t in self.threads)
