"""Branches per calling context, streamed over a thread's block ids chunk by chunk.

:func:`~.callstack.call_trace` rebuilds a thread's call stack from its decoded branches,
all in memory. The collapsed-stack profile needs far less: how many branches were taken
with each distinct stack. This module gets it in one pass over the raw block ids of a
trace file, in memory that grows with the distinct blocks and stacks, never with the
branches: each distinct block is symbolized once (the function of its first and last
byte, the length of its last instruction when that is a call), and a compiled loop
(numba, when installed: decode/jit.py) pairs consecutive ids into taken branches by the
rules of :func:`~branchtrace.decode.decode_blocks` and replays call_trace's stack rules
on them (returns to return addresses, unwinding, lowered baselines, tail calls and
jumps into other functions, signals, gaps). The stack holds nodes of a calling-context
tree (a node is its parent node and a function); each branch adds one to the node on
top. Without numba the same loop runs in Python: the same result, far slower.

The tree equals :func:`~branchtrace.reporters.collapsed.stack_tree` of call_trace's
frames (a test checks it on recorded and built traces): a frame's stack is its chain of
parents, and a return out of the bottom frame (``lower``) puts every frame at the bottom
so far under a new one.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from queue import Empty, Queue
from typing import Any, Protocol, TypeVar

import numpy as np

from ..decode import table_columns
from ..model import BranchKind
from ..store.blocks import FLAG_ASYNC, HOOK_RESUME_SPAN
from . import stackwalk
from .code import CodeReader
from .functions import FunctionIndex

T = TypeVar("T")
_NONE, _CALL, _RET, _INT, _SYS = range(5)
# the walk's scalar state, in an int64 array carried from chunk to chunk
_PREV, _K, _PENDING, _SP, _NODES, _GI, _SHIFT, _ROWS, _BASE = range(9)
_ROW_ROOM = 1 << 15           # frame rows the walk writes before they are taken
_WORKERS = 2                  # threads that filter chunks


class IdPiece(Protocol):
    """Consecutive block ids of one thread (tracefile.stream.IdPiece)."""

    @property
    def ids(self) -> np.ndarray: ...

    @property
    def after_hole(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class ContextTree:
    """The calling contexts of one thread: per node its parent (-1 at the bottom), its
    function key, and the branches taken while it was on top of the stack."""

    parent: np.ndarray      # int64
    function: np.ndarray    # uint64
    weight: np.ndarray      # int64
    branches: int           # taken branches in the thread


class BlockFunctions:
    """What the walk needs of each block of a block table, for one process's symbols."""

    def __init__(self, blocks: np.ndarray, functions: FunctionIndex,
                 reader: CodeReader) -> None:
        start, end, last, kind, flags = table_columns(blocks)
        n = len(start) - 1                       # the sentinel row stands for unknown ids
        kind = np.where(kind > max(BranchKind), np.uint8(BranchKind.OTHER), kind)
        op = np.zeros(n + 1, np.uint8)
        op[(kind == BranchKind.CALL) | (kind == BranchKind.INDIRECT_CALL)] = _CALL
        op[kind == BranchKind.RETURN] = _RET
        op[kind == BranchKind.INTERRUPT] = _INT
        op[kind == BranchKind.SYSCALL] = _SYS
        keys = functions.keys(np.concatenate([start, last]))
        self.to_func = np.ascontiguousarray(keys.key[:n + 1])
        self.to_start = np.ascontiguousarray(keys.start[:n + 1])
        self.from_func = np.ascontiguousarray(keys.key[n + 1:])
        lo = np.zeros(n + 1, np.uint64)
        hi = np.zeros(n + 1, np.uint64)
        calls = np.flatnonzero(op == _CALL)
        if len(calls):
            sites = last[calls]
            lengths = reader.call_lengths(sites)
            lo[calls] = sites + np.where(lengths > 0, lengths, np.uint64(2))
            hi[calls] = sites + np.where(lengths > 0, lengths, np.uint64(15))
        self.start, self.end, self.last, self.flags, self.op = start, end, last, flags, op
        self.lo, self.hi = lo, hi
        # The hot loop reads one row per id: its start and end address and the function
        # of its last and first byte, as small class numbers (equal numbers, equal
        # values). A branch out of a block whose third column is the function the
        # thread is in, into a block whose fourth is that function too, changes no stack
        # (no call, return, interrupt or system call, no jump into another function):
        # the walk only counts it. Those columns hold sentinels (never a class) for the
        # blocks that end with another branch and for signal handlers' blocks.
        _, addr = np.unique(np.concatenate([start, end]), return_inverse=True)
        _, func = np.unique(np.concatenate([self.from_func, self.to_func]), return_inverse=True)
        self.to_class = np.ascontiguousarray(func[n + 1:].astype(np.uint32))
        rows = np.empty((n + 1, 4), np.uint32)
        rows[:, 0], rows[:, 1] = addr[:n + 1], addr[n + 1:]
        rows[:, 2] = np.where(op == _NONE, func[:n + 1], np.uint32(0xFFFF_FFFF))
        rows[:, 3] = np.where((flags & np.uint8(FLAG_ASYNC)) == 0, self.to_class,
                              np.uint32(0xFFFF_FFFE))
        self.rows = rows
        self.sentinel = n


def context_tree(table: BlockFunctions, pieces: Iterable[IdPiece], gaps: list[int],
                 compiled: bool = True) -> ContextTree:
    """The calling-context tree of one thread, from its block ids in order (``pieces``)
    and the branch indices of its gaps that lie between ids of one piece or of pieces
    that follow each other (a piece ``after_hole`` is a gap by itself).

    Two stages: :func:`.stackwalk.filter_ids` finds the branches that may change the stack (calls,
    returns, jumps into another function, ...: a few in a hundred) and counts the
    others; :func:`.stackwalk.walk` replays the stack rules on those. Compiled, the chunks are
    decompressed by a thread of their own and filtered by a pool of two while the
    walk goes on, all outside the GIL; a thread with gaps in its chunks is filtered in
    order (the filter must know the branch index where each chunk begins)."""
    walk = Walk(table, np.array(sorted(gaps), np.int64), compiled)
    drive(walk, pieces)
    return walk.result()


#: Called with each piece and its branches' count before they are walked.
PieceHook = Callable[[IdPiece, int], None]


def drive(walk: Walk, pieces: Iterable[IdPiece], before: PieceHook | None = None) -> None:
    """Walk a thread's ``pieces`` in order (:func:`context_tree`'s two stages); ``before``
    learns each piece's branch count before its branches are walked."""
    pool = None
    if walk.kernel is not None and not len(walk.gaps):
        pool = ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="branchtrace-filter")

    def feed(result: tuple[np.ndarray, int, int], after: bool, piece: IdPiece) -> None:
        if before is not None:
            events, m, tail = result
            before(piece, int(events[:m, 2].sum()) + m + tail)
        walk.feed(*result, after)

    try:
        pending: deque[tuple[Future[tuple[np.ndarray, int, int]], bool, IdPiece]] = deque()
        last, hole = -1, False
        for piece in ahead(pieces):
            ids = piece.ids
            hole = hole or piece.after_hole
            if not len(ids):
                continue
            # the branch across the chunk edge: from the last id before (no copy of ids)
            prior = last if not hole else -1
            last = int(ids[-1])
            if pool is None:
                feed(walk.filter(ids, prior), hole, piece)
            else:
                pending.append((pool.submit(walk.filter, ids, prior), hole, piece))
            hole = False
            while len(pending) > 2 * _WORKERS:
                future, after, done = pending.popleft()
                feed(future.result(), after, done)
        while pending:
            future, after, done = pending.popleft()
            feed(future.result(), after, done)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def ahead(items: Iterable[T], depth: int = 4) -> Iterator[T]:
    """``items`` in order, made by a thread of their own up to ``depth`` ahead (chunks
    are decompressed there: zstd releases the GIL)."""
    queue: Queue[tuple[bool, Any]] = Queue(depth)
    stop = threading.Event()

    def make() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                queue.put((True, item))
            queue.put((False, None))
        except BaseException as err:  # noqa: BLE001 - raised by the reader below
            queue.put((False, err))

    worker = threading.Thread(target=make, name="branchtrace-ahead", daemon=True)
    worker.start()
    try:
        while True:
            more, item = queue.get()
            if not more:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        stop.set()
        while worker.is_alive():          # unblock a put() waiting for room
            try:
                queue.get_nowait()
            except Empty:
                worker.join(0.01)


#: Takes the frame rows the walk wrote (stackwalk.walk): functions, positions.
RowSink = Callable[[np.ndarray, np.ndarray], None]


class Walk:
    """The walk's state over one thread; with ``rows``, the frames that open and close
    are handed to it, a batch at a time (:meth:`flush` hands the last)."""

    def __init__(self, table: BlockFunctions, gaps: np.ndarray, compiled: bool,
                 rows: RowSink | None = None) -> None:
        self.table, self.gaps = table, gaps
        self.kernel = stackwalk.compiled() if compiled else None
        self.state = np.zeros(9, np.int64)
        self.rows = rows
        room = _ROW_ROOM if rows is not None else 0
        self.row_func = np.zeros(room, np.uint64)
        self.row_pos = np.zeros((room, 4), np.int64)
        self.cur_func = np.zeros(1, np.uint64)     # the function the thread is in
        self.stack = _stack(64)
        self.nodes = _nodes(1 << 10)
        self.table_size = 1 << 11
        self.hash = np.full(self.table_size, -1, np.int64)
        self.state[_SHIFT] = 64 - 11

    def filter(self, ids: np.ndarray, before: int) -> tuple[np.ndarray, int, int]:
        """filter_ids of ``ids`` (at least one) after id ``before`` (-1: none): (its
        rows, their count, branches after)."""
        t = self.table
        out = np.empty((len(ids) if before >= 0 else len(ids) - 1, 3), np.int64)
        if self.kernel is None:
            m, tail = stackwalk.filter_ids(ids, before, int(self.state[_K]), self.gaps,
                                           t.rows, t.flags, t.start, t.sentinel,
                                           HOOK_RESUME_SPAN, t.to_class, out)
        else:
            m, tail = self.kernel[0](ids, before, self.state[_K], self.gaps, t.rows, t.flags,
                                     t.start, t.sentinel, HOOK_RESUME_SPAN, t.to_class, out)
        return out[:m].copy(), int(m), int(tail)        # (what waits for the walk is small)

    def feed(self, events: np.ndarray, m: int, tail: int, after_hole: bool) -> None:
        if after_hole:
            self.state[_PENDING] = 1
        t = self.table
        walk = self.kernel[1] if self.kernel is not None else stackwalk.walk
        at = 0
        while True:  # the walk stops early when the stack or the nodes are full
            st, nd = self.stack, self.nodes
            with np.errstate(over="ignore"):    # the hash wraps around (in Python too)
                at = int(walk(events, at, m, t.start, t.last, t.op, t.from_func, t.to_func,
                              t.to_start, t.lo, t.hi, t.flags, self.gaps, self.state,
                              self.cur_func, st[0], st[1], st[2], st[3], st[4], st[5], nd[0],
                              nd[1], nd[2], self.hash, self.row_func, self.row_pos))
            if at == m:
                break
            sp = int(self.state[_SP])
            if self.rows is not None and self.state[_ROWS] + 2 * sp + 8 > len(self.row_func):
                if self.state[_ROWS]:
                    self.flush()
                else:                       # a stack deeper than the rows: more rows
                    self.row_func = np.zeros(2 * len(self.row_func) + 4 * sp, np.uint64)
                    self.row_pos = np.zeros((len(self.row_func), 4), np.int64)
            else:
                self._room()
        if tail:
            self.nodes[2][self.stack[0][int(self.state[_SP]) - 1]] += tail
            self.state[_K] += tail

    def flush(self) -> None:
        """Hand the frame rows written so far to ``rows``."""
        r = int(self.state[_ROWS])
        if r and self.rows is not None:
            self.rows(self.row_func[:r].copy(), self.row_pos[:r].copy())
        self.state[_ROWS] = 0

    @property
    def branches(self) -> int:
        """Taken branches walked so far."""
        return int(self.state[_K])

    def open_frames(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The frames on the stack, bottom first: function keys, the positions they
        opened at, their depths (from the thread's first frame)."""
        sp = int(self.state[_SP])
        depth = np.arange(sp, dtype=np.int64) + int(self.state[_BASE])
        return self.stack[1][:sp].copy(), self.stack[5][:sp].copy(), depth

    def _room(self) -> None:
        """Double whatever is short: the stack, or the nodes (and their hash table)."""
        sp, used = int(self.state[_SP]), int(self.state[_NODES])
        if sp + 2 > len(self.stack[0]):
            self.stack = [np.concatenate([a, np.zeros_like(a)]) for a in self.stack]
        if used + 2 > len(self.nodes[0]):
            self.nodes = [np.concatenate([a, np.zeros_like(a)]) for a in self.nodes]
            self.table_size = 2 * len(self.nodes[0])
            self.hash = np.full(self.table_size, -1, np.int64)
            self.state[_SHIFT] = 64 - (self.table_size.bit_length() - 1)
            rehash: Any = stackwalk.rehash
            rehash(self.nodes[0], self.nodes[1], used, self.hash, int(self.state[_SHIFT]))

    def result(self) -> ContextTree:
        used = int(self.state[_NODES])
        parent, function, weight = (a[:used].copy() for a in self.nodes)
        return ContextTree(parent, function.view(np.uint64), weight, int(self.state[_K]))

def _stack(size: int) -> list[np.ndarray]:
    """node, function, return range lo and hi, signal address, the position the frame
    opened at, per stack slot."""
    return [np.zeros(size, np.int64), np.zeros(size, np.uint64), np.zeros(size, np.uint64),
            np.zeros(size, np.uint64), np.zeros(size, np.uint64), np.zeros(size, np.int64)]


def _nodes(size: int) -> list[np.ndarray]:
    """parent, function, weight per node."""
    return [np.zeros(size, np.int64), np.zeros(size, np.uint64), np.zeros(size, np.int64)]


