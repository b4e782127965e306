"""The producer side of the store: :class:`ThreadBuffer`, one per traced thread.

A producer appends records to its thread's region and publishes ``written`` after
them; in stream mode it first reserves a whole chunk, waiting for the consumer to
free one. The protocol is specified in docs/store-format.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from ..errors import StoreError, UsageError

from .layout import _CONSUMED, _WAITS, _WRITTEN, BLOCKID_DTYPE, FROMTO_DTYPE, Encoding

_NO_END = 1 << 64  # the reserved end of a ring-mode producer: never reached
_WAIT_FIRST, _WAIT_MAX = 50e-6, 2e-3  # producer backoff in seconds


class ThreadBuffer:
    """The producer side of one thread's buffer, for producers written in Python.

    ``push`` runs once per recorded branch, so it keeps the numpy views, the capacity
    and its own copy of ``written`` in attributes and never reads the header. A store
    hands out one ThreadBuffer per thread (:meth:`Store.thread`); there must be one
    producer per thread. In stream mode a push waits, sleeping with a backoff from
    50 µs to 2 ms, while no chunk is free; ``should_abort`` lets the caller give up
    (the push then raises :class:`StoreError`).
    """

    def __init__(
        self, tid: int, counters: np.ndarray, records: np.ndarray, encoding: Encoding,
        chunk_records: int, should_abort: Callable[[], bool] | None = None,
    ) -> None:
        self.tid = tid
        self.should_abort = should_abort
        self._encoding = encoding
        self._counters = counters  # the thread entry as 8 little-endian u64 words
        self._records = records
        self._cap = len(records)
        self._chunk = chunk_records
        self._w = int(counters[_WRITTEN])
        self._slot = self._w % self._cap
        self._seen_consumed = int(counters[_CONSUMED])
        # End of the positions this producer may write without checking for room.
        self._reserved_end = _NO_END
        if chunk_records:  # a chunk already begun was reserved by whoever began it
            self._reserved_end = -(-self._w // chunk_records) * chunk_records
        fromto = encoding == Encoding.FROMTO
        self._end_fromto = self._reserved_end if fromto else -1  # -1: push() always checks
        self._end_block = -1 if fromto else self._reserved_end
        empty = np.zeros(0, "<u8")
        self._from = records["from_ip"] if fromto else empty
        self._to = records["to_ip"] if fromto else empty
        self._kind = records["kind"] if fromto else empty

    @property
    def written(self) -> int:
        """Records ever pushed to this thread's buffer."""
        return self._w

    def push(self, from_ip: int, to_ip: int, kind: int) -> None:
        """Append one FROMTO record."""
        w = self._w
        if w >= self._end_fromto:
            self._reserve(Encoding.FROMTO)
        s = self._slot
        self._from[s] = from_ip
        self._to[s] = to_ip
        self._kind[s] = kind
        self._w = w + 1
        self._slot = s + 1 if s + 1 < self._cap else 0
        self._counters[_WRITTEN] = w + 1  # publish after the record (x86 is TSO)

    def push_block(self, block_id: int) -> None:
        """Append one BLOCKID record."""
        w = self._w
        if w >= self._end_block:
            self._reserve(Encoding.BLOCKID)
        s = self._slot
        self._records[s] = block_id
        self._w = w + 1
        self._slot = s + 1 if s + 1 < self._cap else 0
        self._counters[_WRITTEN] = w + 1

    def push_many(self, records: np.ndarray) -> None:
        """Append an array of records, oldest first, publishing ``written`` per piece.

        FROMTO takes any 1-D structured array with from_ip, to_ip and kind fields
        (:data:`FROMTO_DTYPE`, the canonical BRANCH_DTYPE); BLOCKID takes integers.
        """
        data = self._coerce(records)
        i, n = 0, len(data)
        while i < n:
            w, s = self._w, self._slot
            if w >= self._reserved_end:
                self._reserve(self._encoding)
            k = min(n - i, self._cap - s, self._reserved_end - w)
            self._records[s:s + k] = data[i:i + k]
            i += k
            self._w = w + k
            self._slot = (s + k) % self._cap
            self._counters[_WRITTEN] = w + k

    def _coerce(self, records: np.ndarray) -> np.ndarray:
        arr = np.asarray(records)
        if arr.ndim != 1:
            raise UsageError(f"push_many needs a 1-D array, not one of shape {arr.shape}")
        if self._encoding == Encoding.FROMTO:
            if arr.dtype == FROMTO_DTYPE:
                return arr
            if not {"from_ip", "to_ip", "kind"} <= set(arr.dtype.names or ()):
                raise UsageError(
                    f"push_many needs from_ip, to_ip and kind fields, not {arr.dtype}"
                )
            out = np.zeros(len(arr), FROMTO_DTYPE)
            for name in ("from_ip", "to_ip", "kind"):
                out[name] = arr[name]
            return out
        if arr.dtype.kind not in "ui":
            raise UsageError(f"push_many needs integer block ids, not {arr.dtype}")
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 0xFFFFFFFF):
            raise UsageError("block ids must fit in 32 bits")
        return arr.astype(BLOCKID_DTYPE, copy=False)

    def _reserve(self, encoding: Encoding) -> None:
        """At a chunk start (stream mode): wait until the whole chunk is free."""
        if self._reserved_end < 0:
            raise StoreError(self._detached_message())
        if encoding != self._encoding:
            raise UsageError(
                f"this store records {self._encoding.name} records, not {encoding.name}"
            )
        need = self._w + self._chunk - self._cap  # consumed must reach this
        if self._seen_consumed < need:
            self._seen_consumed = int(self._counters[_CONSUMED])
            if self._seen_consumed < need:
                self._wait(need)
        self._reserved_end = self._w + self._chunk
        if encoding == Encoding.FROMTO:
            self._end_fromto = self._reserved_end
        else:
            self._end_block = self._reserved_end

    def _wait(self, need: int) -> None:
        self._counters[_WAITS] = int(self._counters[_WAITS]) + 1
        delay = _WAIT_FIRST
        while True:
            abort = self.should_abort
            if abort is not None and abort():
                raise StoreError(f"thread {self.tid}: gave up waiting for a free chunk")
            time.sleep(delay)
            delay = min(2 * delay, _WAIT_MAX)
            if self._reserved_end < 0:
                raise StoreError(self._detached_message())
            self._seen_consumed = int(self._counters[_CONSUMED])
            if self._seen_consumed >= need:
                return

    def _detached_message(self) -> str:
        return f"the buffer of thread {self.tid} was released or its store closed"

    def _detach(self) -> None:
        """Drop every view of the store's memory; later pushes raise StoreError."""
        empty = np.zeros(0, "<u8")
        self._counters = np.zeros(8, "<u8")
        self._records = self._from = self._to = self._kind = empty
        self._reserved_end = self._end_fromto = self._end_block = -1
