"""The distinct addresses of a run, symbolized once each, and the lookup that gives a
chunk of branches its symbol columns.

Block-id traces (stalker) need no pass over the branches: every ``from_ip`` is some
recorded block-table row's ``last`` and every ``to_ip`` a row's ``start``. From/to traces
(ptrace) are read once, chunk by chunk, for their distinct addresses. Each address is
symbolized once (:meth:`Symbolizer.resolve`); a chunk's addresses are then found in
the table by a hash lookup (``pyarrow.compute.index_in``) and its symbol columns are
dictionary arrays over the table's strings: no string is built per branch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..store import Encoding
from ..store.blocks import FLAG_UNRECORDED, FLAG_VALID
from ..symbols import Symbolizer
from ..tracefile.stream import Piece, pieces
from .runs import Run, module_maps

_MERGE_EVERY = 64       # pieces between merges of the distinct addresses of a from/to trace


def distinct_addresses(run: Run) -> np.ndarray:
    """Every address a branch of the run can have, sorted, as uint64."""
    tf = run.tf
    if tf.encoding == Encoding.BLOCKID:
        if tf.blocks is None:
            return np.zeros(0, np.uint64)
        # blocks never recorded (Frida's own code, ...) are in no branch
        flags = tf.blocks["flags"]
        rows = tf.blocks[((flags & FLAG_VALID) != 0) & ((flags & FLAG_UNRECORDED) == 0)]
        return np.unique(np.concatenate([rows["start"], rows["last"]]).astype(np.uint64))
    found: list[np.ndarray] = [np.zeros(0, np.uint64)]
    for k, p in enumerate(p for p in pieces(tf) if isinstance(p, Piece)):
        found.append(np.unique(np.concatenate([p.branches["from_ip"], p.branches["to_ip"]])))
        if k % _MERGE_EVERY == _MERGE_EVERY - 1:
            found = [np.unique(np.concatenate(found))]
    return np.unique(np.concatenate(found)).astype(np.uint64)


class Addresses:
    """The symbolized distinct addresses of one run (one process's modules)."""

    def __init__(self, run: Run, symbolizer: Symbolizer | None = None) -> None:
        import pyarrow as pa

        self.run = run
        self.symbolizer = symbolizer if symbolizer is not None else Symbolizer(
            module_maps(run.tf))
        a = distinct_addresses(run)
        res = self.symbolizer.resolve(a)
        self.address = a
        self.value_set = pa.array(a.view(np.int64))
        mods = tuple(m.name for m in self.symbolizer.modules)
        known = res.function >= 0
        # per address: indices into each string table (null: unknown)
        self.function = pa.array(res.function, mask=~known)
        self.module = pa.array(res.module, mask=res.module < 0)
        self.file = pa.array(res.file, mask=res.file < 0)
        self.line = pa.array(res.line, mask=(res.file < 0) | (res.line <= 0))
        self.offset = pa.array(res.offset.view(np.int64), mask=~known)
        self.function_names = pa.array(res.function_names, pa.string())
        self.module_names = pa.array(mods, pa.string())
        self.file_names = pa.array(res.file_names, pa.string())

    def __len__(self) -> int:
        return len(self.address)

    def columns(self, ips: Any) -> list[Any]:
        """function, module, file (dictionary arrays) and line of each address of the
        int64 array ``ips``; null where not known."""
        import pyarrow as pa
        import pyarrow.compute as pc

        at = pc.index_in(ips, value_set=self.value_set)
        return [pa.DictionaryArray.from_arrays(self.function.take(at), self.function_names),
                pa.DictionaryArray.from_arrays(self.module.take(at), self.module_names),
                pa.DictionaryArray.from_arrays(self.file.take(at), self.file_names),
                self.line.take(at)]

    def table(self) -> Any:
        """The ``addresses`` table of the run (plain strings)."""
        import pyarrow as pa

        from .schema import ADDRESSES, arrow_schema

        n = len(self.address)
        cols = [pa.array([self.run.id] * n, pa.string()),
                pa.array(np.full(n, self.run.pid, np.int64)), self.value_set,
                self.function_names.take(self.function), self.offset,
                self.module_names.take(self.module), self.file_names.take(self.file),
                self.line]
        return pa.Table.from_arrays(cols, schema=arrow_schema(ADDRESSES))
