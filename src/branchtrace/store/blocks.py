"""The block table: what a 32-bit block id (the BLOCKID store encoding) stands for.

A backend that records block ids (the Stalker backend) writes one entry per translated
block, once, when it translates it; decode (:mod:`branchtrace.decode`) turns a thread's
sequence of ids into branches with it. The table is a file in shared memory so that it
survives the target: the tracer creates it (mode 0600, ``O_EXCL``) in the store's
private directory, the code in the target maps it and appends entries, and the tracer
reads it when the run is over. docs/stalker.md describes it; this module is its
specification in code.

Layout, little-endian::

    offset 0    header, 64 bytes: TABLE_HEADER_DTYPE
    offset 64   entry 0, entry 1, ...: BLOCK_DTYPE (32 bytes each), indexed by id

``count`` in the header is the id counter itself: the target takes ids from it with an
atomic add, so it may pass ``capacity`` (ids past the capacity were never recorded).
An entry whose ``flags`` lacks ``FLAG_VALID`` was never completed (an id handed out
just before the target died) and is treated as unknown.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import TraceFormatError

TABLE_MAGIC = b"BTBLOCKS"
#: Block table format version. Changelog: 1 - first version.
TABLE_VERSION = 1
TABLE_HEADER_SIZE = 64
#: Default number of entries a table file can hold (the file is sparse: a page of it
#: takes memory only once entries are written there).
DEFAULT_TABLE_CAPACITY = 1 << 22

TABLE_HEADER_DTYPE = np.dtype({
    "names": ["magic", "version", "entry_size", "capacity", "count", "events"],
    "formats": ["S8", "<u4", "<u4", "<u8", "<u4", "<u4"],
    "offsets": [0, 8, 12, 16, 24, 28],
    "itemsize": TABLE_HEADER_SIZE,
})
#: ``events`` bits (the u32 at 28 is one byte per event, 0 or 1: recorder.h BT_EVENT_*):
#: what the target saw that the tracer notes.
#: A thread of the program set its own gs base while its records went through gs
#: (stalker agent, thread.c): they went through a slower path from then on.
EVENT_GS_LOST = 1
#: Code ran from memory that is no file's (a JIT's), without ``--smc-check all``: code
#: rewritten after it ran may have run as Stalker first compiled it.
EVENT_ANON_CODE = 0x100
#: The trace's note for it (backends/stalker/ending.py; `run` repeats it when the
#: program ends badly, cli/_record.py).
ANON_CODE_NOTE = ("the program ran code from memory that is no file's (a JIT's?): code it "
                  "rewrites after running it may have run as first compiled (java fails "
                  "so); run --smc-check all makes it run as rewritten")

#: One translated block. ``kind`` is the :class:`~branchtrace.model.BranchKind` of its
#: last instruction; ``end`` is the address after it (where the block falls through).
BLOCK_DTYPE = np.dtype([
    ("start", "<u8"),     # address of the first instruction
    ("last", "<u8"),      # address of the last instruction
    ("end", "<u8"),       # address just past the last instruction
    ("kind", "u1"),       # BranchKind of the last instruction
    ("flags", "u1"),      # FLAG_* bits
    ("ninsn", "<u2"),     # instructions in the block (saturates at 65535)
    ("reserved", "<u4"),
])
assert BLOCK_DTYPE.itemsize == 32

FLAG_VALID = 1        # the entry is complete
FLAG_FOREIGN = 2      # outside the modules of --only: its branches are not reported
FLAG_UNRECORDED = 4   # no recording code was emitted (table full, or Frida's own code)
FLAG_TOOL = 8         # the block is Frida's own code (agent, interceptor trampolines)
FLAG_HOOKED = 16      # starts with an Interceptor hook's jump into Frida's code: the
                      # program's own instructions resume a few bytes further on
FLAG_ASYNC = 32       # a signal handler, entered by the kernel: the transition into it
                      # is an INTERRUPT, the one out of it its RETURN (its inside runs
                      # outside Stalker and is not recorded)
#: How far past a hooked block's start the program's code may resume (the hook's jump
#: displaces whole instructions covering at least its 5 bytes).
HOOK_RESUME_SPAN = 32


def table_bytes(capacity: int) -> int:
    """Size of a table file holding ``capacity`` entries."""
    return TABLE_HEADER_SIZE + capacity * BLOCK_DTYPE.itemsize


def create_table(directory: Path, stem: str, capacity: int = DEFAULT_TABLE_CAPACITY) -> Path:
    """Create the empty (sparse) table file ``directory/stem.blocks``, mode 0600; never
    an existing one (``O_EXCL``, no symbolic links)."""
    path = directory / f"{stem}.blocks"
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    try:
        os.ftruncate(fd, table_bytes(capacity))
        head = np.zeros(1, TABLE_HEADER_DTYPE)
        head["magic"] = TABLE_MAGIC
        head["version"] = TABLE_VERSION
        head["entry_size"] = BLOCK_DTYPE.itemsize
        head["capacity"] = capacity
        os.pwrite(fd, head.tobytes(), 0)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
    return path


def read_header(path: Path) -> np.void:
    """The checked header of the table file at ``path``."""
    try:
        with open(path, "rb") as f:
            raw = f.read(TABLE_HEADER_SIZE)
    except OSError as err:
        raise TraceFormatError(f"{path}: cannot read the block table: {err.strerror or err}") from None
    if len(raw) < TABLE_HEADER_SIZE:
        raise TraceFormatError(f"{path}: not a block table (only {len(raw)} bytes)")
    head: np.void = np.frombuffer(raw, TABLE_HEADER_DTYPE)[0]
    if bytes(head["magic"]).ljust(8, b"\0") != TABLE_MAGIC:
        raise TraceFormatError(f"{path}: not a block table (bad magic)")
    if int(head["version"]) != TABLE_VERSION:
        raise TraceFormatError(
            f"{path}: block table version {int(head['version'])}, this branchtrace reads "
            f"{TABLE_VERSION}"
        )
    if int(head["entry_size"]) != BLOCK_DTYPE.itemsize:
        raise TraceFormatError(f"{path}: block table entries of {int(head['entry_size'])} bytes")
    return head


def read_table(path: Path) -> tuple[np.ndarray, int]:
    """The entries of the table at ``path`` (a copy, indexed by id) and how many ids were
    handed out past its capacity (blocks that were run but never recorded)."""
    head = read_header(path)
    capacity, count = int(head["capacity"]), int(head["count"])
    n = min(capacity, count)
    try:
        with open(path, "rb") as f:
            # Checked before reading: a hostile count must not size an allocation.
            if TABLE_HEADER_SIZE + n * BLOCK_DTYPE.itemsize > os.fstat(f.fileno()).st_size:
                raise TraceFormatError(f"{path}: block table is truncated")
            f.seek(TABLE_HEADER_SIZE)
            raw = f.read(n * BLOCK_DTYPE.itemsize)
    except OSError as err:
        raise TraceFormatError(f"{path}: cannot read the block table: {err.strerror or err}") from None
    if len(raw) < n * BLOCK_DTYPE.itemsize:
        raise TraceFormatError(f"{path}: block table is truncated")
    return np.frombuffer(raw, BLOCK_DTYPE).copy(), max(0, count - capacity)


def table_events(path: Path) -> int:
    """The ``events`` bits of the table at ``path`` (0 when it cannot be read)."""
    try:
        return int(read_header(path)["events"])
    except TraceFormatError:
        return 0


def read_complete_rows(path: Path, first_id: int) -> np.ndarray:
    """The entries from ``first_id`` on that are complete now, in a table the target is
    still writing: up to (not including) the first entry without ``FLAG_VALID``. For a
    trace file written while the program runs.

    The target writes an entry's fields and then its flags. The rows are read twice:
    an entry whose flags were already set in the first read has all its fields in the
    second one (x86 keeps stores, and loads, in order)."""
    try:
        head = read_header(path)
        capacity, count = int(head["capacity"]), int(head["count"])
        n = max(0, min(capacity, count) - first_id)
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            offset = TABLE_HEADER_SIZE + first_id * BLOCK_DTYPE.itemsize
            n = min(n, max(0, (size - offset) // BLOCK_DTYPE.itemsize))
            seen = np.frombuffer(os.pread(f.fileno(), n * BLOCK_DTYPE.itemsize, offset), BLOCK_DTYPE)
            done = np.flatnonzero((seen["flags"] & FLAG_VALID) == 0)
            n = int(done[0]) if len(done) else len(seen)
            rows = np.frombuffer(os.pread(f.fileno(), n * BLOCK_DTYPE.itemsize, offset), BLOCK_DTYPE)
    except (OSError, TraceFormatError):
        return np.zeros(0, BLOCK_DTYPE)
    return rows[:n].copy()


def make_table(rows: list[tuple[int, int, int, int]], flags: int = FLAG_VALID) -> np.ndarray:
    """A table from ``(start, last, end, kind)`` rows, id = row index (for tests and tools)."""
    table = np.zeros(len(rows), BLOCK_DTYPE)
    for i, (start, last, end, kind) in enumerate(rows):
        table[i] = (start, last, end, kind, flags, 1, 0)
    return table
