"""The ``branches`` table of a run as Arrow record batches, one decoded chunk at a time.

:func:`branch_batches` turns each :class:`~branchtrace.tracefile.stream.Piece` into one
record batch of the ``branches`` schema (strings dictionary-encoded), so memory is
bounded by a chunk whatever the trace length. :class:`Source` is what DuckDB scans: an
object with ``__arrow_c_stream__`` (the Arrow PyCapsule interface) that starts a new
pass over the file each time it is asked for a stream, so a query may name
``branches`` twice (a self-join, a view built on it) and each scan reads the file
from the start.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..model import Gap
from ..tracefile.stream import ThreadStream
from .addresses import Addresses
from .prefetch import prefetch
from .runs import Run
from .schema import BRANCHES, KIND_LABELS, arrow_schema


def branch_schema(*, dictionary: bool = True, without: tuple[str, ...] = ()) -> Any:
    return arrow_schema(BRANCHES, dictionary=dictionary, without=without)


def thread_batches(run: Run, addresses: Addresses, tid: int, *,
                   without: tuple[str, ...] = ()) -> Iterator[Any]:
    """The branches of one thread of ``run``, oldest first, a batch per piece
    (``without``: columns left out, as the partitions of an export)."""
    import pyarrow as pa

    schema = branch_schema(without=without)
    kinds = pa.array(KIND_LABELS, pa.string())
    run_name = pa.array([run.id], pa.string())
    pid = run.pids.get(tid, run.pid)
    prev_to: int | None = None           # the last to_ip before this piece (None: a gap)
    for item in prefetch(iter(ThreadStream(run.tf, tid))):
        if isinstance(item, Gap):
            prev_to = None
            continue
        b = item.branches
        m = len(b)
        if m == 0:
            continue
        from_ip = pa.array(np.ascontiguousarray(b["from_ip"]).view(np.int64))
        to_np = np.ascontiguousarray(b["to_ip"]).view(np.int64)
        to_ip = pa.array(to_np)
        start = np.empty(m, np.int64)
        start[1:] = to_np[:-1]
        start[0] = prev_to if prev_to is not None else 0
        mask = None
        if prev_to is None:
            mask = np.zeros(m, bool)
            mask[0] = True
        prev_to = int(to_np[-1])
        cols: dict[str, Any] = {
            "run": pa.DictionaryArray.from_arrays(pa.array(np.zeros(m, np.int32)), run_name),
            "pid": pa.array(np.full(m, pid, np.int64)),
            "tid": pa.array(np.full(m, tid, np.int64)),
            "seq": pa.array(np.arange(item.index, item.index + m, dtype=np.int64)),
            "from_ip": from_ip, "to_ip": to_ip,
            "kind": pa.DictionaryArray.from_arrays(
                pa.array(b["kind"].astype(np.int32)), kinds),
            "block_start": pa.array(start, mask=mask),
        }
        for side, ips in (("from", from_ip), ("to", to_ip)):
            function, module, file, line = addresses.columns(ips)
            cols.update({f"{side}_function": function, f"{side}_module": module,
                         f"{side}_file": file, f"{side}_line": line})
        yield pa.RecordBatch.from_arrays([cols[name] for name in schema.names], schema=schema)


def branch_batches(run: Run, addresses: Addresses) -> Iterator[Any]:
    """The branches of every thread of ``run``, thread after thread."""
    for tid in run.tids:
        yield from thread_batches(run, addresses, tid)


class Source:
    """A table DuckDB can scan any number of times: each stream it asks for is a new
    pass of ``make()`` (lazy: nothing is read until the first batch is)."""

    def __init__(self, schema: Any, make: Callable[[], Iterator[Any]]) -> None:
        self.schema = schema
        self.make = make

    def reader(self) -> Any:
        import pyarrow as pa

        return pa.RecordBatchReader.from_batches(self.schema, self.make())

    def __arrow_c_stream__(self, requested_schema: object | None = None) -> object:
        return self.reader().__arrow_c_stream__(requested_schema)
