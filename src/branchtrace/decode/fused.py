"""Block ids -> branches chunk by chunk, with no buffer of all of a thread's ids.

The two-pass path (tracefile/load.py, decode/__init__.py) decompresses every chunk of a
thread into one buffer of raw ids (830 MB for 200M ids), then counts, then fills the
branches: memory that is slow to touch the first time (one page fault per 4 KiB page,
bigarrays.py), and two passes over it. Here each chunk is decompressed piece
by piece (at most STEP_IDS ids) into a small buffer of the worker's, its branches are
decoded (compiled: jit.py) into a second small buffer, then copied to their place
in the result. That place is known only in chunk order: the chunks go to the workers in
tasks, in order, and each task hands its successor where its branches end and the last
id of its last chunk as soon as it knows them. The successor waits for that only to
place its own branches and to decode the pair (that id, its own first id), which can
be a branch too; when the place is already known, branches are decoded straight into
it. The result is reserved for one branch per id (bigarrays.reserve: only what is written
becomes resident); its filled prefix is what the thread gets (copied, when small).

A chunk that does not decompress to the size it declares is a hole, as in load.py: its
branches are dropped, and the chunk after it starts a new run (no pair across a hole).
Nothing is allocated for what a chunk only claims.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import zstandard

from .. import progress
from ..bigarrays import reserve
from ..model import BRANCH_DTYPE
from ..store import RECORD_DTYPES, Encoding
from ..tracefile.chunkbody import open_records, read_full
from . import JIT_MIN_IDS, jit, table_columns

if TYPE_CHECKING:
    from ..tracefile.reader import Chunk, TraceFile

#: Threads with fewer ids (as their chunks declare) take the two-pass path: numpy is
#: fast enough there, and importing numba would cost more. Tests lower it.
FUSED_MIN_IDS = JIT_MIN_IDS
#: Ids a worker decompresses and decodes at a time (1 MiB); consecutive smaller chunks
#: make one task of up to as many ids.
STEP_IDS = 1 << 18
#: Results smaller than this are copied into an array of their own size (and the
#: reservation let go).
_COPY_BELOW = 64 << 20
_MAX_TASK_CHUNKS = 256
#: Ids a worker reads at first: a chunk that claims more must hold them before the
#: worker's buffer grows to STEP_IDS.
_FIRST_IDS = 1 << 12
_WORKERS = min(4, os.cpu_count() or 1)

Decoder = Callable[[np.ndarray, np.ndarray], int]
#: Per chunk: (index, count) of its branches in the result; None when it is a hole.
Spans = list[tuple[int, int] | None]


def usable(tf: TraceFile, chunks: list[Chunk]) -> bool:
    """Whether this thread's chunks are decoded here (numba is imported only once a
    chunk really holds ids)."""
    return (tf.encoding == Encoding.BLOCKID and tf.blocks is not None and bool(chunks)
            and RECORD_DTYPES[Encoding.BLOCKID] == np.dtype(np.uint32)   # native order
            and sum(c.head.count for c in chunks) >= FUSED_MIN_IDS and jit.enabled())


def decode(tf: TraceFile, chunks: list[Chunk], pool: ThreadPoolExecutor,
           local: threading.local) -> tuple[np.ndarray, Spans] | None:
    """The branches of one thread's chunks (in order, without overlaps) and where each
    chunk's are; None when the result cannot be reserved (strict overcommit) or numba
    does not compile: then the two-pass path does it all."""
    assert tf.blocks is not None
    result = reserve(sum(c.head.count for c in chunks), BRANCH_DTYPE)
    if result is None:
        return None
    job = _Job(tf.blocks, chunks, result, local)
    workers = min(len(job.tasks), _WORKERS)
    if workers == 1:
        job.work()
    else:
        for future in [pool.submit(job.work) for _ in range(workers)]:
            future.result()
    if isinstance(job.error, _Unavailable):
        return None
    if job.error is not None:
        raise job.error
    n = job.ends[-1]
    if n * BRANCH_DTYPE.itemsize < _COPY_BELOW:
        return result[:n].copy(), job.spans
    return result[:n], job.spans


class _Unavailable(Exception):
    """numba does not compile here."""


class _Job:
    """One thread's chunks, cut into tasks of consecutive chunks that workers take in
    order; each task hands its successor where its branches end (``ends``) and the last
    id of its last chunk (``lasts``: -1 when that chunk is a hole)."""

    def __init__(self, blocks: np.ndarray, chunks: list[Chunk], result: np.ndarray,
                 local: threading.local) -> None:
        self.columns = table_columns(blocks)
        self.decoder: Decoder | None = None
        self.chunks, self.result, self.local = chunks, result, local
        self.bytes = result.view(np.uint8)
        # Whether chunk k comes right after chunk k - 1 (no hole between them).
        self.follows = [k > 0 and c.head.first_index == chunks[k - 1].head.first_index
                        + chunks[k - 1].head.count for k, c in enumerate(chunks)]
        self.tasks: list[tuple[int, int]] = []
        lo, ids = 0, 0
        for k, c in enumerate(chunks):
            if k > lo and (ids + c.head.count > STEP_IDS or k - lo >= _MAX_TASK_CHUNKS):
                self.tasks.append((lo, k))
                lo, ids = k, 0
            ids += c.head.count
        self.tasks.append((lo, len(chunks)))
        self.spans: Spans = [None] * len(chunks)
        self.ends = [0] * len(self.tasks)
        self.lasts = [-1] * len(self.tasks)
        self.done = [False] * len(self.tasks)
        self.handed = threading.Condition()
        self.taken = 0                      # tasks taken by a worker (in order)
        self.error: BaseException | None = None

    def decode(self) -> Decoder:
        if self.decoder is None:
            self.decoder = jit.bind(*self.columns)
            if self.decoder is None:
                raise _Unavailable
        return self.decoder

    def work(self) -> None:
        """Take the next task until none is left. A task is taken only once the one
        before it was: the task it waits for is always under way."""
        while True:
            with self.handed:
                j = self.taken
                self.taken += 1
            if j >= len(self.tasks):
                return
            try:
                if self.error is None:
                    _Task(self, j).work()
            except BaseException as err:  # noqa: BLE001 - the caller raises it
                self.error = self.error or err
            finally:
                self.hand(j, self.ends[j], self.lasts[j])   # a failed task hangs no one

    def hand(self, j: int, end: int, last: int) -> None:
        with self.handed:
            if not self.done[j]:
                self.ends[j], self.lasts[j], self.done[j] = end, last, True
                self.handed.notify_all()

    def wait(self, j: int) -> tuple[int, int]:
        """Where task ``j``'s branches end and its last id, once it says."""
        with self.handed:
            while not self.done[j]:
                self.handed.wait()
            return self.ends[j], self.lasts[j]


class _Task:
    """One task: its chunks decoded into the worker's buffer, then placed."""

    def __init__(self, job: _Job, j: int) -> None:
        self.job, self.j = job, j
        self.lo, self.hi = job.tasks[j]
        self.pending = 0        # branches in the worker's buffer, not yet placed
        self.placed = 0         # branches placed, after base + boundary
        self.base = -1          # where the task's branches begin, once known
        self.boundary = 0       # 1 when (predecessor's last id, first id) is a branch
        self.first_id = -1      # the first id of the first chunk
        self.first_bad = False  # the first chunk is a hole
        local = job.local
        self.dctx: zstandard.ZstdDecompressor | None = getattr(local, "dctx", None)
        if self.dctx is None:
            self.dctx = local.dctx = zstandard.ZstdDecompressor()

    def work(self) -> None:
        job = self.job
        prev = -1                         # the id the next chunk's first pairs with
        starts: dict[int, tuple[int, int]] = {}
        for k in range(self.lo, self.hi):
            if not job.follows[k] or k == self.lo:
                prev = -1
            mark = self.placed + self.pending
            prev = self._chunk(job.chunks[k], prev, k == self.lo)
            progress.advance(job.chunks[k].size)
            if prev < 0:                  # a hole: drop what it gave
                if mark >= self.placed:
                    self.pending = mark - self.placed
                else:
                    self.placed, self.pending = mark, 0
                if k == self.lo:
                    self.boundary, self.first_bad = 0, True
            else:
                starts[k] = (mark, self.placed + self.pending - mark)
        self._settle()
        # the successor may go on while this copies
        job.hand(self.j, self.base + self.boundary + self.placed + self.pending, prev)
        self._flush()
        for k, (at, n) in starts.items():
            job.spans[k] = (self.base, self.boundary + n) if k == self.lo \
                else (self.base + self.boundary + at, n)

    def _chunk(self, c: Chunk, prev: int, first: bool) -> int:
        """Decode chunk ``c`` after id ``prev`` (-1: none); its last id, -1 when it does
        not decompress to the size it declares."""
        assert self.dctx is not None
        size = c.head.count
        ids: np.ndarray | None = getattr(self.job.local, "fused_ids", None)
        if ids is None:
            ids = np.empty(0, np.uint32)
        done = 0
        try:
            with open_records(self.dctx, c.body, c.narrow) as reader:
                while done < size:
                    m = min(STEP_IDS, size - done)
                    if done == 0:                 # nothing read yet: what it claims
                        m = min(m, max(len(ids) - 1, _FIRST_IDS))
                    if len(ids) < m + 1:
                        grow = min(STEP_IDS, _FIRST_IDS) if done == 0 else STEP_IDS
                        ids = self.job.local.fused_ids = np.empty(grow + 1, np.uint32)
                    if not read_full(reader, ids.view(np.uint8).data[4:4 + 4 * m]):
                        return -1
                    if first and done == 0:
                        self.first_id = int(ids[1])
                    if prev >= 0:
                        ids[0] = prev
                    seq = ids[:1 + m] if prev >= 0 else ids[1:1 + m]
                    if len(seq) >= 2:
                        self._decode(seq)
                    prev = int(ids[m])
                    done += m
        except zstandard.ZstdError:
            return -1
        return prev

    def _decode(self, seq: np.ndarray) -> None:
        """The branches of ``seq``: straight to their place when it is known (the
        predecessor is done), else into the worker's buffer."""
        job = self.job
        if self.base < 0 and (self.j == 0 or job.done[self.j - 1]):
            self._settle()                # without waiting
        at = self.base + self.boundary + self.placed
        if self.base >= 0 and not self.pending and at + len(seq) - 1 <= len(job.result):
            self.placed += job.decode()(seq, job.result[at:at + len(seq) - 1])
        else:
            out = self._room(len(seq) - 1)        # (may place what is pending first)
            self.pending += job.decode()(seq, out)

    def _room(self, need: int) -> np.ndarray:
        """The worker's output buffer past what is pending, with room for ``need``."""
        if self.pending and self.pending + need > STEP_IDS:
            self._flush()
        local = self.job.local
        out: np.ndarray | None = getattr(local, "fused_out", None)
        if out is None or len(out) < self.pending + need:
            size = max(self.pending + need, 0 if out is None else 2 * len(out))
            grown = np.empty(min(STEP_IDS, size), BRANCH_DTYPE)
            if out is not None and self.pending:
                grown.view(np.uint8)[:self.pending * BRANCH_DTYPE.itemsize] = \
                    out.view(np.uint8)[:self.pending * BRANCH_DTYPE.itemsize]
            out = local.fused_out = grown
        return out[self.pending:self.pending + need]

    def _settle(self) -> None:
        """Wait for the predecessor: where this task's branches begin, and whether the
        pair (its last id, this task's first) is a branch (placed first)."""
        if self.base >= 0:
            return
        end, last = self.job.wait(self.j - 1) if self.j > 0 else (0, -1)
        self.base = end
        if last >= 0 and self.first_id >= 0 and not self.first_bad and self.job.follows[self.lo] \
                and end < len(self.job.result):
            pair = np.array([last, self.first_id], np.uint32)
            self.boundary = self.job.decode()(pair, self.job.result[end:end + 1])

    def _flush(self) -> None:
        """Copy the pending branches to their place (as bytes: numpy copies packed
        structured rows field by field, ten times slower)."""
        if not self.pending:
            return
        self._settle()
        size = BRANCH_DTYPE.itemsize
        at = (self.base + self.boundary + self.placed) * size
        out: np.ndarray = self.job.local.fused_out
        self.job.bytes[at:at + self.pending * size] = out.view(np.uint8)[:self.pending * size]
        self.placed += self.pending
        self.pending = 0
