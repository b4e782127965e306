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

The package is split by concept; the classes and constants of the first five modules are
importable from ``branchtrace.store`` (lazily, on first use):

* :mod:`.layout` - format constants, enums, dtypes, :class:`StoreConfig`, status types;
* :mod:`.files` - making, reserving and checking the store file;
* :mod:`.producer` - :class:`ThreadBuffer`, the producer side of one thread;
* :mod:`.core` - :class:`Store`, the mapped file, its operations and thread table;
* :mod:`.consumer` - :class:`StreamConsumer`, a draining thread for stream mode;
* :mod:`.blocks` - the block table of the BLOCKID encoding (the stalker backend's);
* :mod:`.sizes` - sizes (records or bytes) and the memory limit the store may take.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

#: Where each name lives. They are imported on first use (PEP 562), so that importing
#: :mod:`.sizes` (which the CLI needs to parse its options) does not pull in numpy.
_LAZY = {name: "layout" for name in __all__}
_LAZY.update(StreamConsumer="consumer", Store="core", ThreadBuffer="producer")


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # Static imports, not importlib: the readers' AST scan (tests/reliability) forbids it.
    from . import consumer, core, layout, producer

    modules = {"consumer": consumer, "core": core, "layout": layout, "producer": producer}
    value = getattr(modules[module], name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
