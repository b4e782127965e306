"""The consumer side of the store and its thread table: :class:`Store`.

A Store maps a store file (made by :meth:`Store.create` or opened with
:meth:`Store.open`) and implements the six operations of the ptrace-BTS design on
it: config, :meth:`~Store.status`, :meth:`~Store.size`, :meth:`~Store.get`,
:meth:`~Store.clear` and :meth:`~Store.drain`; it also adds, ends and releases
thread buffers and hands out their producer sides (:class:`ThreadBuffer`).
"""

from __future__ import annotations

import mmap
import os
import shutil
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import numpy as np

from ..errors import MemoryLimitError, StoreError, UsageError
from .files import _allocate, create_file, discard_file, open_file
from .layout import (
    HEADER_DTYPE,
    HEADER_SIZE,
    RECORD_DTYPES,
    THREAD_DTYPE,
    THREAD_ENTRY_SIZE,
    Encoding,
    StoreConfig,
    StoreMode,
    StoreStatus,
    ThreadState,
    ThreadStatus,
)
from .producer import ThreadBuffer
from .sizes import format_bytes


class Store:
    """A branch trace store file, mapped. Build with :meth:`create` or :meth:`open`.

    The consumer side (drain, clear, ...) and thread management are serialized by a
    lock, so a :class:`StreamConsumer` thread and the tracer can share a Store.
    """

    def __init__(self, path: Path, fd: int, owned_dir: Path | None, created: bool,
                 limit_reason: str) -> None:
        self.path = path
        self.limit_reason = limit_reason
        self._fd = fd
        self._owned_dir = owned_dir
        self._created = created
        self._lock = threading.RLock()
        self._closed = False
        head = np.frombuffer(os.pread(fd, HEADER_SIZE, 0), HEADER_DTYPE)[0]
        self.mode = StoreMode(int(head["mode"]))
        self.encoding = Encoding(int(head["encoding"]))
        self.record_dtype = RECORD_DTYPES[self.encoding]
        self.capacity = int(head["capacity"])
        self.chunk_records = int(head["chunk_records"])
        self.nchunks = int(head["nchunks"])
        self.max_threads = int(head["max_threads"])
        self.region_bytes = int(head["region_bytes"])
        self.regions_offset = int(head["regions_offset"])
        self.memory_limit = int(head["memory_limit"])
        self._mm = mmap.mmap(fd, self.regions_offset)
        self._header = np.frombuffer(self._mm, HEADER_DTYPE, count=1)
        self._table = np.frombuffer(self._mm, THREAD_DTYPE, self.max_threads, HEADER_SIZE)
        self._regions: dict[int, tuple[mmap.mmap, np.ndarray]] = {}
        self._buffers: dict[int, ThreadBuffer] = {}

    @classmethod
    def create(cls, config: StoreConfig, directory: Path | None = None) -> Store:
        """Make a new store file (mode 0600) and reserve the first thread region.

        Without ``directory``, a fresh private directory (mode 0700) under /dev/shm
        (or the temporary directory) holds it, and :meth:`close` removes both. Raises
        :class:`MemoryLimitError` when header, table and one region exceed the limit.
        """
        path, fd, owned, why = create_file(config, directory)
        try:
            return cls(path, fd, owned, True, why)
        except BaseException:
            discard_file(path, fd, owned)
            raise

    @classmethod
    def open(cls, path: Path | str) -> Store:
        """Map an existing store (e.g. one whose producer has exited)."""
        path = Path(path)
        try:
            fd = open_file(path)
        except OSError as err:       # a FIFO or device: pread cannot seek
            raise StoreError(f"cannot read store {path}: {err.strerror or err}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise StoreError(f"{path} is not a regular file, not a branchtrace store")
            store = cls(path, fd, None, False, "recorded in the store header")
        except BaseException:
            os.close(fd)
            raise
        n = store._nthreads()
        expected = store.regions_offset + np.arange(n, dtype="<u8") * store.region_bytes
        if not np.array_equal(store._table["region_offset"][:n], expected):
            store.close(unlink=False)
            raise StoreError(f"{path}: corrupt thread table (bad region offsets)")
        states = store._table["state"][:n]
        if np.any(states > max(ThreadState)):
            store.close(unlink=False)
            raise StoreError(f"{path}: corrupt thread table (thread state "
                             f"{int(states.max())})")
        return store

    # -- the six operations ------------------------------------------------------------

    @property
    def config(self) -> StoreConfig:
        return StoreConfig(self.mode, self.encoding, self.capacity, self.chunk_records,
                           self.memory_limit, self.max_threads)

    @property
    def memory_used(self) -> int:
        """Bytes of the file: header, table and every thread region allocated so far."""
        return self.regions_offset + self._nthreads() * self.region_bytes

    def status(self) -> StoreStatus:
        with self._lock:
            threads = tuple(self._thread_status(s) for s in self._live_slots())
            return StoreStatus(self.path, self.mode, self.encoding, self.capacity,
                               self.chunk_records, self.nchunks, self.memory_used,
                               self.memory_limit, threads)

    def size(self, tid: int | None = None) -> int:
        """Records held by thread ``tid``, or by every thread."""
        with self._lock:
            slots = self._live_slots() if tid is None else [self._slot(tid)]
            return sum(self._held(s) for s in slots)

    def get(self, tid: int, i: int) -> np.ndarray:
        """The ``i``-th newest record of ``tid`` (0 = newest), copied into a 0-d array:
        ``rec["from_ip"]`` for FROMTO, ``int(rec)`` for BLOCKID."""
        with self._lock:
            slot = self._slot(tid)
            held, w = self._held(slot), self._word(slot, "written")
            if not 0 <= i < held:
                raise StoreError(
                    f"record index {i} is out of range for thread {tid}: it holds {held} "
                    f"records (0 = newest, {held - 1} = oldest)" if held else
                    f"record index {i} is out of range for thread {tid}: it holds no records"
                )
            s = (w - 1 - i) % self.capacity
            return self._region(slot)[s:s + 1].copy().reshape(())

    def peek(self, tid: int) -> np.ndarray:
        """A copy of the held records of ``tid``, oldest first, without consuming them."""
        with self._lock:
            slot = self._slot(tid)
            w = self._word(slot, "written")
            return self._copy(slot, w - self._held(slot, w), w)

    def peek_live(self, tid: int) -> tuple[np.ndarray, int]:
        """A copy of the held records of ``tid`` while its producer may be writing (a
        snapshot): oldest first, without those the producer may have overwritten during
        the copy (ring mode), and how many records the thread has written in all."""
        with self._lock:
            slot = self._slot(tid)
            w = self._word(slot, "written")
            start = w - self._held(slot, w)
            out = self._copy(slot, start, w)
            if self.mode == StoreMode.RING:
                w2 = self._word(slot, "written")
                unsafe = min(max(0, w2 - self.capacity + 1 - start), len(out))
                out = out[unsafe:]
            return out, w

    def clear(self, tid: int | None = None) -> None:
        """Drop the held records of ``tid`` (or of every thread); ring mode adds the
        records overwritten since the last clear or drain to ``lost``."""
        with self._lock:
            for slot in self._live_slots() if tid is None else [self._slot(tid)]:
                w, c = self._word(slot, "written"), self._word(slot, "consumed")
                self._set(slot, "lost_acc", self._word(slot, "lost_acc") + self._overwritten(w, c))
                self._set(slot, "consumed", w)

    def drain(self, tid: int, final: bool = True) -> np.ndarray:
        """Take the available records of ``tid``, oldest first (a copy), and consume them.

        ``final=True`` is for a producer that has stopped: everything is taken. With
        ``final=False`` (producer running) stream mode takes whole chunks only, and ring
        mode drops (and counts as lost) the records the producer may be overwriting.
        """
        with self._lock:
            slot = self._slot(tid)
            w, c = self._word(slot, "written"), self._word(slot, "consumed")
            if self.mode == StoreMode.STREAM:
                # a producer waits for room, so only a corrupt table has more than the
                # region holds; what is past it is lost, not read twice
                start = max(c, w - self.capacity)
                end = w if final else max(start, w - w % self.chunk_records)
                out = self._copy(slot, start, end)
                if start > c:
                    self._set(slot, "lost_acc", self._word(slot, "lost_acc") + start - c)
                self._set(slot, "consumed", end)  # frees the slots: after the copy
                return out
            start = max(c, w - self.capacity)
            out = self._copy(slot, start, w)
            lost = start - c
            if not final:
                w2 = self._word(slot, "written")  # positions < w2 - capacity + 1 may be torn
                unsafe = min(max(0, w2 - self.capacity + 1 - start), len(out))
                out, lost = out[unsafe:], lost + unsafe
            self._set(slot, "lost_acc", self._word(slot, "lost_acc") + lost)
            self._set(slot, "consumed", w)
            return out

    # -- threads -------------------------------------------------------------------------

    def tids(self) -> list[int]:
        """Threads with a buffer (active or exited), in slot order."""
        with self._lock:
            return [int(self._table["tid"][s]) for s in self._live_slots()]

    def add_thread(self, tid: int, should_abort: Callable[[], bool] | None = None) -> ThreadBuffer:
        """Give thread ``tid`` a buffer: a released region if any, else a new one.

        Raises :class:`MemoryLimitError` when a new region would pass the memory limit
        or the thread table is full; the store stays usable.
        """
        with self._lock:
            self._check_open()
            if not 0 < tid < 1 << 32:
                raise UsageError(f"thread id {tid} does not fit the store's 32-bit tid field")
            if tid in self.tids():
                raise StoreError(f"thread {tid} already has a buffer; release it first")
            n = self._nthreads()
            free = np.flatnonzero(self._table["state"][:n] == ThreadState.FREE)
            if free.size:
                slot = int(free[0])
            else:
                slot = n
                need = self.regions_offset + (n + 1) * self.region_bytes
                if n >= self.max_threads:
                    raise MemoryLimitError(
                        f"no buffer for thread {tid}: all {n} thread slots are in use"
                    )
                if need > self.memory_limit:
                    raise MemoryLimitError(
                        f"no buffer for thread {tid}: {n + 1} thread buffers need "
                        f"{format_bytes(need)}, over the memory limit of "
                        f"{format_bytes(self.memory_limit)}"
                    )
                _allocate(self._fd, need - self.region_bytes, self.region_bytes, self.path)
                self._set(slot, "region_offset", need - self.region_bytes)
                self._header["nthreads"] = n + 1
            for name in ("written", "consumed", "lost_acc", "producer_waits", "slot_cursor",
                         "reserved_end"):
                self._set(slot, name, 0)
            self._table["tid"][slot] = tid
            self._table["state"][slot] = ThreadState.ACTIVE  # last: the entry is ready
            return self._buffer(slot, should_abort)

    def thread(self, tid: int) -> ThreadBuffer:
        """The producer side of thread ``tid``'s buffer (one object per thread)."""
        with self._lock:
            return self._buffer(self._slot(tid), None)

    def placement(self, tid: int) -> tuple[int, int]:
        """Where thread ``tid``'s buffer is, for a producer that writes the file itself
        (the stalker agent): its index in the thread table, and its region's byte offset."""
        with self._lock:
            slot = self._slot(tid)
            return slot, self._word(slot, "region_offset")

    def mark_exited(self, tid: int) -> None:
        """Note that ``tid`` has ended; its records stay until drained and released."""
        with self._lock:
            self._table["state"][self._slot(tid)] = ThreadState.EXITED

    def release_thread(self, tid: int) -> None:
        """Free the buffer of ``tid`` (drained or cleared first) for a later thread."""
        with self._lock:
            slot = self._slot(tid)
            held = self._held(slot)
            if held:
                raise StoreError(
                    f"thread {tid} still holds {held} records: drain or clear it first"
                )
            buffer = self._buffers.pop(slot, None)
            if buffer is not None:
                buffer._detach()
            self._table["state"][slot] = ThreadState.FREE
            self._table["tid"][slot] = 0

    # -- lifetime ------------------------------------------------------------------------

    def close(self, unlink: bool | None = None) -> None:
        """Unmap and close; remove the file (and the private directory it was made in)
        when ``unlink``, which defaults to whether this Store created the file."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for buffer in self._buffers.values():
                buffer._detach()
            self._buffers.clear()
            maps = [mm for mm, _ in self._regions.values()] + [self._mm]
            self._regions.clear()
            del self._header, self._table
            for mm in maps:
                try:
                    mm.close()
                except BufferError:  # a view is still alive somewhere: freed with it
                    pass
            os.close(self._fd)
            if self._created if unlink is None else unlink:
                self.path.unlink(missing_ok=True)
                if self._owned_dir is not None:
                    shutil.rmtree(self._owned_dir, ignore_errors=True)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"the store {self.path} is closed")

    def _nthreads(self) -> int:
        self._check_open()
        return int(self._header["nthreads"][0])

    def _live_slots(self) -> list[int]:
        n = self._nthreads()
        return [int(s) for s in np.flatnonzero(self._table["state"][:n] != ThreadState.FREE)]

    def _slot(self, tid: int) -> int:
        n = self._nthreads()
        table = self._table[:n]
        hits = np.flatnonzero((table["tid"] == tid) & (table["state"] != ThreadState.FREE))
        if not hits.size:
            raise StoreError(f"thread {tid} has no buffer in the store")
        return int(hits[0])

    def _word(self, slot: int, name: str) -> int:
        return int(self._table[name][slot])

    def _set(self, slot: int, name: str, value: int) -> None:
        # saturate: counters read from a corrupt table must not overflow the u64 field
        self._table[name][slot] = min(max(value, 0), (1 << 64) - 1)

    def _held(self, slot: int, written: int | None = None) -> int:
        """Records the thread's region holds: written - consumed, never negative and
        never more than the region has room for, in either mode (the ring overwrites
        its oldest; a stream producer waits, so only a corrupt table says more)."""
        w = self._word(slot, "written") if written is None else written
        held = max(0, w - self._word(slot, "consumed"))   # never negative, even if corrupt
        return min(held, self.capacity)

    def _thread_status(self, slot: int) -> ThreadStatus:
        w, c = self._word(slot, "written"), self._word(slot, "consumed")
        lost = self._word(slot, "lost_acc") + self._overwritten(w, c)
        state = self._word(slot, "state")
        return ThreadStatus(self._word(slot, "tid"),
                            ThreadState(state) if state <= max(ThreadState) else ThreadState.ACTIVE,
                            self._held(slot, w), w, c, lost, self._word(slot, "producer_waits"))

    def _overwritten(self, written: int, consumed: int) -> int:
        """Records the ring overwrote since ``consumed`` (always 0 in stream mode)."""
        return max(0, written - consumed - self.capacity)

    def _region(self, slot: int) -> np.ndarray:
        """The records of ``slot``, mapped on first use (its own mmap: the file may grow)."""
        mapped = self._regions.get(slot)
        if mapped is None:
            try:
                offset = self._word(slot, "region_offset")
                mm = mmap.mmap(self._fd, self.region_bytes, offset=offset)
            except (ValueError, OSError) as err:
                raise StoreError(f"cannot map slot {slot} of {self.path}: {err}") from None
            mapped = (mm, np.frombuffer(mm, self.record_dtype, self.capacity))
            self._regions[slot] = mapped
        return mapped[1]

    def _buffer(self, slot: int, should_abort: Callable[[], bool] | None) -> ThreadBuffer:
        buffer = self._buffers.get(slot)
        if buffer is None:
            counters = np.frombuffer(self._mm, "<u8", 8, HEADER_SIZE + slot * THREAD_ENTRY_SIZE)
            buffer = ThreadBuffer(self._word(slot, "tid"), counters, self._region(slot),
                                  self.encoding, self.chunk_records, should_abort)
            self._buffers[slot] = buffer
        elif should_abort is not None:
            buffer.should_abort = should_abort
        return buffer

    def _copy(self, slot: int, start: int, end: int) -> np.ndarray:
        """A copy of the records at absolute positions [start, end), oldest first."""
        region, n = self._region(slot), max(0, end - start)
        if n > self.capacity:                  # a corrupt table: the region holds no more
            start, n = end - self.capacity, self.capacity
        s = start % self.capacity
        if s + n <= self.capacity:
            return region[s:s + n].copy()
        return np.concatenate((region[s:], region[:s + n - self.capacity]))

