"""The branches of a trace file as Arrow record batches: :meth:`TraceReader.iter_batches`,
``to_arrow`` and ``to_pandas``.

One batch per piece of :meth:`~branchtrace.TraceReader.iter_branches` (at most a chunk
of branches): memory is bounded by a chunk whatever the trace's length. The symbol
columns, on request, come from ``query.addresses.Addresses`` (as ``branchtrace sql``
and ``export`` make them): every distinct address of the run symbolized once, each
batch's columns looked up by hash and dictionary-encoded over the names, so no string
is made per branch. pyarrow is imported here, on first use (the ``arrow`` extra).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from .api_types import Column
from .errors import UsageError
from .model import Gap

if TYPE_CHECKING:
    from .reader import TraceReader

#: Branch kinds as the ``kind`` column names them, by their value (model.BranchKind).
KIND_NAMES = ("other", "call", "return", "jump", "cond", "indirect_jump", "indirect_call",
              "syscall", "interrupt")
_SYMBOLS = ("function", "module", "file", "line")
_COLUMNS = (*_SYMBOLS, "time")


def _pyarrow() -> Any:
    try:
        import pyarrow as pa
    except ImportError:
        raise UsageError("the Arrow and pandas tables need pyarrow: "
                         "pip install 'branchtrace[arrow]'") from None
    return pa


def arrow_schema(columns: tuple[Column, ...]) -> Any:
    """The schema of the branch table with the ``columns`` asked for."""
    pa = _pyarrow()
    for c in columns:
        if c not in _COLUMNS:
            raise UsageError(f"unknown column {c!r} (choose from {', '.join(_COLUMNS)})")
    fields = [pa.field("pid", pa.int64()), pa.field("tid", pa.int64()),
              pa.field("seq", pa.int64()), pa.field("from_ip", pa.uint64()),
              pa.field("to_ip", pa.uint64()),
              pa.field("kind", pa.dictionary(pa.int8(), pa.string()))]
    for side in ("from", "to"):
        for name in _SYMBOLS:
            if name in columns:
                kind = pa.int32() if name == "line" else pa.dictionary(pa.int32(), pa.string())
                fields.append(pa.field(f"{side}_{name}", kind))
    if "time" in columns:
        fields.append(pa.field("time", pa.timestamp("ns", tz="UTC")))
    return pa.schema(fields)


def batches(reader: TraceReader, tids: list[int], columns: tuple[Column, ...],
            chunk: int) -> Iterator[Any]:
    """The record batches of threads ``tids`` of ``reader``."""
    pa = _pyarrow()
    schema = arrow_schema(columns)
    kinds = pa.array(KIND_NAMES, pa.string())
    symbols = [c for c in _SYMBOLS if c in columns]
    addresses: dict[int, Any] = {}           # per process: its symbolized addresses
    for tid in tids:
        view = reader.view_of(tid)
        if symbols and view.pid not in addresses:
            addresses[view.pid] = _addresses(reader, view)
        for piece in reader.iter_branches(tid, chunk):
            if isinstance(piece, Gap) or not len(piece.branches):
                continue
            b, m = piece.branches, len(piece.branches)
            from_ip = np.ascontiguousarray(b["from_ip"])
            to_ip = np.ascontiguousarray(b["to_ip"])
            cols: dict[str, Any] = {
                "pid": pa.array(np.full(m, view.pid, np.int64)),
                "tid": pa.array(np.full(m, tid, np.int64)),
                "seq": pa.array(np.arange(piece.index, piece.index + m, dtype=np.int64)),
                "from_ip": pa.array(from_ip), "to_ip": pa.array(to_ip),
                "kind": pa.DictionaryArray.from_arrays(
                    pa.array(np.minimum(b["kind"], len(KIND_NAMES) - 1).astype(np.int8)),
                    kinds),
            }
            if symbols:
                table = addresses[view.pid]
                for side, ips in (("from", from_ip), ("to", to_ip)):
                    found = table.columns(pa.array(ips.view(np.int64)))
                    for c, values in zip(_SYMBOLS, found):
                        cols[f"{side}_{c}"] = values
            if "time" in columns:
                cols["time"] = _times(pa, piece.first_ns, piece.last_ns, m)
            yield pa.RecordBatch.from_arrays([cols[f.name] for f in schema], schema=schema)


def _addresses(reader: TraceReader, view: Any) -> Any:
    """The distinct addresses of the file, symbolized with the modules of ``view``'s
    process (query.addresses)."""
    from .query.addresses import Addresses
    from .query.runs import Run, thread_pids

    tf = reader._file()
    return Addresses(Run(reader.path.stem, str(reader.path), tf, thread_pids(tf)),
                     view.symbolizer)


def _times(pa: Any, first_ns: int, last_ns: int, m: int) -> Any:
    """Estimated times of ``m`` branches drained between ``first_ns`` and ``last_ns``:
    spread evenly (as ``Trace.times``); null when the file does not say."""
    if not first_ns or last_ns < first_ns:
        return pa.nulls(m, pa.timestamp("ns", tz="UTC"))
    span = last_ns - first_ns
    ns = first_ns + np.round(span * np.arange(1, m + 1) / m).astype(np.int64)
    return pa.array(ns, pa.timestamp("ns", tz="UTC"))


def for_pandas(table: Any) -> Any:
    """``table`` as a pandas DataFrame: each symbol column a categorical of distinct
    names (two modules may both have a ``main``), lines as nullable integers."""
    pa = _pyarrow()
    import pyarrow.compute as pc
    try:
        import pandas as pd
    except ImportError:
        raise UsageError("to_pandas needs pandas: pip install 'branchtrace[pandas]'") from None

    for k, f in enumerate(table.schema):
        if pa.types.is_dictionary(f.type) and f.name != "kind":
            column = pc.dictionary_encode(table.column(k).cast(pa.string()))
            table = table.set_column(k, f.name, column)
    return table.to_pandas(types_mapper={pa.int32(): pd.Int32Dtype()}.get)
