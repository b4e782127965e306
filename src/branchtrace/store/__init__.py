"""The Branch Trace Store: per-thread branch buffers in one shared-memory file.

This is the BTS of the 2007 ptrace-BTS design, made a file so that the tracer and code
injected into the target can both map it: a 4096-byte header, a table of 64-byte
thread entries, then one page-aligned region of ``capacity`` records per thread. The
byte layout and the producer/consumer protocol are specified in docs/store-format.md;
the constants and numpy dtypes of :mod:`.layout` are that specification in code.

Ring mode keeps the newest ``capacity`` records of each thread and counts what it
overwrote; stream mode is lossless, handing whole chunks to the consumer and making
the producer wait when no chunk is free. Positions are absolute: the record at
position ``p`` lives in slot ``p % capacity``; ``written`` (producer) and ``consumed``
(consumer) only grow. The six operations of the kernel design are
:meth:`Store.create` (config), :meth:`Store.status`, :meth:`Store.size`,
:meth:`Store.get`, :meth:`Store.clear` and :meth:`Store.drain`.

The package is split by concept; everything is importable from ``branchtrace.store``:

* :mod:`.layout` - format constants, enums, dtypes, :class:`StoreConfig`, status types;
* :mod:`.files` - making, reserving and checking the store file;
* :mod:`.producer` - :class:`ThreadBuffer`, the producer side of one thread;
* :mod:`.core` - :class:`Store`, the mapped file, its operations and thread table;
* :mod:`.consumer` - :class:`StreamConsumer`, a draining thread for stream mode.
"""

from __future__ import annotations

from .consumer import StreamConsumer
from .core import Store
from .layout import (
    BLOCKID_DTYPE,
    DEFAULT_MAX_THREADS,
    DEFAULT_RING_RECORDS,
    DEFAULT_STREAM_RECORDS,
    FROMTO_DTYPE,
    HEADER_DTYPE,
    HEADER_SIZE,
    MAGIC,
    MAX_CHUNK_RECORDS,
    PAGE,
    RECORD_DTYPES,
    THREAD_DTYPE,
    THREAD_ENTRY_SIZE,
    VERSION,
    Encoding,
    StoreConfig,
    StoreMode,
    StoreStatus,
    ThreadState,
    ThreadStatus,
)
from .producer import ThreadBuffer

# The private helpers of the former single module stay reachable here, as they were.
from .files import _allocate as _allocate
from .files import _check_header as _check_header
from .files import _default_parent as _default_parent
from .layout import _CONSUMED as _CONSUMED
from .layout import _HEADER_FIELDS as _HEADER_FIELDS
from .layout import _WAITS as _WAITS
from .layout import _WRITTEN as _WRITTEN
from .layout import _page_round as _page_round
from .producer import _NO_END as _NO_END
from .producer import _WAIT_FIRST as _WAIT_FIRST
from .producer import _WAIT_MAX as _WAIT_MAX

__all__ = [
    "BLOCKID_DTYPE",
    "DEFAULT_MAX_THREADS",
    "DEFAULT_RING_RECORDS",
    "DEFAULT_STREAM_RECORDS",
    "FROMTO_DTYPE",
    "HEADER_DTYPE",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_CHUNK_RECORDS",
    "PAGE",
    "RECORD_DTYPES",
    "THREAD_DTYPE",
    "THREAD_ENTRY_SIZE",
    "VERSION",
    "Encoding",
    "Store",
    "StoreConfig",
    "StoreMode",
    "StoreStatus",
    "StreamConsumer",
    "ThreadBuffer",
    "ThreadState",
    "ThreadStatus",
]
