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
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from queue import Empty, Queue
from typing import Any, Protocol, TypeVar, no_type_check

import numpy as np

from ..decode import jit, table_columns
from ..model import BranchKind
from ..store.blocks import FLAG_ASYNC, FLAG_FOREIGN, FLAG_HOOKED, FLAG_VALID, HOOK_RESUME_SPAN
from .code import CodeReader
from .functions import FunctionIndex

T = TypeVar("T")
_NONE, _CALL, _RET, _INT, _SYS = range(5)
_NO_SIG = np.uint64(0xFFFF_FFFF_FFFF_FFFF)     # a frame that is no signal handler's
_MUL = np.uint64(0x9E3779B97F4A7C15)
_MIX = np.uint64(0xC2B2AE3D27D4EB4F)
# the walk's scalar state, in an int64 array carried from chunk to chunk
_PREV, _K, _PENDING, _SP, _NODES, _GI, _SHIFT = range(7)


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
    that follow each other (a piece ``after_hole`` is a gap by itself)."""
    walk = _Walk(table, np.array(sorted(gaps), np.int64), compiled)
    for piece in ahead(pieces):
        walk.feed(piece.ids, piece.after_hole)
    return walk.result()


def ahead(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """``items`` in order, made by a thread of their own up to ``depth`` ahead: the next
    chunk is decompressed (zstd releases the GIL) while the compiled walk (which
    releases it too) goes over this one."""
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


class _Walk:
    def __init__(self, table: BlockFunctions, gaps: np.ndarray, compiled: bool) -> None:
        self.table, self.gaps = table, gaps
        self.kernel = _compiled() if compiled else None
        self.state = np.zeros(7, np.int64)
        self.state[_PREV] = -1
        self.cur_func = np.zeros(2, np.uint64)     # the function the thread is in, its class
        self.stack = _stack(64)
        self.nodes = _nodes(1 << 10)
        self.table_size = 1 << 11
        self.hash = np.full(self.table_size, -1, np.int64)
        self.state[_SHIFT] = 64 - 11

    def feed(self, ids: np.ndarray, after_hole: bool) -> None:
        if after_hole:
            self.state[_PREV] = -1
            self.state[_PENDING] = 1
        t = self.table
        walk = self.kernel if self.kernel is not None else _walk
        if self.kernel is None:
            with np.errstate(over="ignore"):       # the hash wraps around, as compiled
                self._feed(walk, ids)
            return
        self._feed(walk, ids)

    def _feed(self, walk: Any, ids: np.ndarray) -> None:
        t = self.table
        at = 0
        while at < len(ids):  # the walk stops early when the stack or the nodes are full
            st, nd = self.stack, self.nodes
            at += int(walk(ids[at:], t.start, t.end, t.last, t.flags, t.sentinel,
                           HOOK_RESUME_SPAN, t.op, t.rows, t.to_class, t.from_func, t.to_func,
                           t.to_start, t.lo, t.hi, self.gaps,
                           self.state, self.cur_func, st[0], st[1], st[2], st[3], st[4],
                           nd[0], nd[1], nd[2], self.hash))
            if at < len(ids):
                self._room()

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
            rehash: Any = _rehash
            rehash(self.nodes[0], self.nodes[1], used, self.hash, int(self.state[_SHIFT]))

    def result(self) -> ContextTree:
        used = int(self.state[_NODES])
        parent, function, weight = (a[:used].copy() for a in self.nodes)
        return ContextTree(parent, function.view(np.uint64), weight, int(self.state[_K]))


def _stack(size: int) -> list[np.ndarray]:
    """node, function, return range lo and hi, signal address per stack slot."""
    return [np.zeros(size, np.int64), np.zeros(size, np.uint64), np.zeros(size, np.uint64),
            np.zeros(size, np.uint64), np.zeros(size, np.uint64)]


def _nodes(size: int) -> list[np.ndarray]:
    """parent, function, weight per node."""
    return [np.zeros(size, np.int64), np.zeros(size, np.uint64), np.zeros(size, np.int64)]


@no_type_check    # compiled by numba (or run as it is without it)
def _child(parent, func, node_parent, node_func, node_weight, table, state):
    """The node (parent, func), made if new."""
    mask = np.uint64(len(table) - 1)
    h = ((func ^ (np.uint64(parent + 1) * _MIX)) * _MUL) >> np.uint64(state[6])
    while True:
        j = table[h]
        if j < 0:
            j = state[4]
            state[4] = j + 1
            node_parent[j] = parent
            node_func[j] = func
            node_weight[j] = 0
            table[h] = j
            return j
        if node_parent[j] == parent and node_func[j] == func:
            return j
        h = (h + np.uint64(1)) & mask


@no_type_check    # compiled by numba (or run as it is without it)
def _rehash(node_parent, node_func, used, table, shift):
    """Put nodes 0..used-1 into an empty hash table."""
    mask = np.uint64(len(table) - 1)
    for j in range(used):
        h = ((node_func[j] ^ (np.uint64(node_parent[j] + 1) * _MIX)) * _MUL) >> np.uint64(shift)
        while table[h] >= 0:
            h = (h + np.uint64(1)) & mask
        table[h] = j


@no_type_check    # compiled by numba (or run as it is without it)
def _walk(ids, start, end, last, flags, n, span, op_of, rows, to_class, from_func,  # noqa: C901, PLR0912, PLR0915
          to_func, to_start, lo_of, hi_of, gaps, state, cur, st_node, st_func, st_lo, st_hi, st_sig,
          node_parent, node_func, node_weight, table):
    """Pair the ids into taken branches and replay the stack rules on them; returns how
    many ids it consumed (fewer than all when the stack or the nodes need room)."""
    prev = state[0]
    k = state[1]
    pending = state[2]
    sp = state[3]
    gi = state[5]
    cur_func = cur[0]
    cur_class = np.uint32(cur[1])
    room_stack = len(st_node) - 2
    room_nodes = len(node_parent) - 2
    no_sig = np.uint64(0xFFFF_FFFF_FFFF_FFFF)
    span64 = np.uint64(span)
    next_gap = gaps[gi] if gi < len(gaps) else -1
    # the next branch index that takes the slow path whatever it is: the first branch,
    # the one after a hole, the one at a gap of the file
    stop = k if (k == 0 or pending != 0) else next_gap
    plain = 0               # branches that changed no stack, not yet added to the top's weight
    i = 0
    if prev < 0 and len(ids):
        prev = min(np.int64(ids[0]), n)
        i = 1
    while i < len(ids):
        c = min(np.int64(ids[i]), n)
        # taken (decode_blocks' rules), and whether it changes no stack, as 0 or 1: which
        # way they go cannot be predicted, so the usual case adds without a jump
        taken = np.int64((rows[c, 0] != rows[prev, 1]) & ((flags[prev] & flags[c] & 3) == 1))
        if (flags[prev] & 16) != 0 and start[prev] <= start[c] <= start[prev] + span64:
            taken = 0
        usual = np.int64((rows[prev, 2] == cur_class) & (rows[c, 3] == cur_class)
                         & (k != stop))
        if taken <= usual:
            plain += taken
            k += taken
        else:                                           # a branch that may change the stack
            if sp > room_stack or state[4] > room_nodes:
                break                                   # the caller makes room
            if plain:
                node_weight[st_node[sp - 1]] += plain
                plain = 0
            p = prev
            gap = pending != 0
            while gi < len(gaps) and gaps[gi] <= k:
                if gaps[gi] == k:
                    gap = True
                gi += 1
            next_gap = gaps[gi] if gi < len(gaps) else -1
            stop = next_gap
            pending = 0
            ff = from_func[p]
            tf = to_func[c]
            if k == 0:                                  # the first frame
                st_node[0] = _child(-1, ff, node_parent, node_func, node_weight, table, state)
                st_func[0] = ff
                st_lo[0] = 1
                st_hi[0] = 0
                st_sig[0] = no_sig
                sp = 1
            elif gap:                                   # resume after a gap
                if st_func[sp - 1] != ff:
                    j = sp - 2
                    while j >= 0 and st_func[j] != ff:
                        j -= 1
                    if j >= 0:
                        sp = j + 1
                    else:
                        st_node[sp] = _child(st_node[sp - 1], ff, node_parent, node_func,
                                             node_weight, table, state)
                        st_func[sp] = ff
                        st_lo[sp] = 1
                        st_hi[sp] = 0
                        st_sig[sp] = no_sig
                        sp += 1
            elif ff != cur_func:                        # fell through into another function
                up = st_node[sp - 2] if sp > 1 else -1
                st_node[sp - 1] = _child(up, ff, node_parent, node_func, node_weight, table,
                                         state)
                st_func[sp - 1] = ff
            node_weight[st_node[sp - 1]] += 1
            k += 1
            cur_func = tf
            cur_class = to_class[c]
            op = op_of[p]
            if (flags[c] & 32) != 0:
                op = 3
            target = start[c]
            # switch: the top frame goes on in tf (tail call, jump, ...)
            switch = False
            if op == 1:                                 # call
                st_node[sp] = _child(st_node[sp - 1], tf, node_parent, node_func, node_weight,
                                     table, state)
                st_func[sp] = tf
                st_lo[sp] = lo_of[p]
                st_hi[sp] = hi_of[p]
                st_sig[sp] = no_sig
                sp += 1
            elif op == 2:                               # return
                if sp > 1 and st_lo[sp - 1] <= target <= st_hi[sp - 1] and st_func[sp - 2] == tf:
                    sp -= 1
                else:
                    j = sp - 1
                    while j > 0 and not (st_lo[j] <= target <= st_hi[j] and st_func[j - 1] == tf):
                        j -= 1
                    if j > 0:
                        sp = j
                    else:
                        j = sp - 2
                        while j >= 0 and st_func[j] != tf:
                            j -= 1
                        if j >= 0:
                            sp = j + 1
                        elif st_sig[sp - 1] != no_sig:
                            switch = True               # a handler returns to the restorer
                        elif sp == 1:                   # lower: a new bottom frame
                            j = state[4]
                            state[4] = j + 1
                            node_parent[j] = -1
                            node_func[j] = tf
                            node_weight[j] = 0
                            for m in range(j):
                                if node_parent[m] == -1:
                                    node_parent[m] = j
                            table[:] = -1
                            _rehash(node_parent, node_func, j + 1, table, state[6])
                            st_node[0] = j
                            st_func[0] = tf
                            st_lo[0] = 1
                            st_hi[0] = 0
                            st_sig[0] = no_sig
                        else:                           # back to a caller we never saw
                            sp -= 1
                            switch = True
            elif op == 3:                               # interrupt
                st_node[sp] = _child(st_node[sp - 1], tf, node_parent, node_func, node_weight,
                                     table, state)
                st_func[sp] = tf
                st_lo[sp] = 1
                st_hi[sp] = 0
                st_sig[sp] = last[p]                    # where the thread was
                sp += 1
            else:
                done = False
                if op == 4:                             # sigreturn?
                    j = sp - 1
                    while j > 0 and st_sig[j] != target:
                        j -= 1
                    if j > 0:
                        sp = j
                        switch = st_func[sp - 1] != tf
                        done = True
                if not done and (op != 0 or ff != tf) and st_func[sp - 1] != tf:
                    j = -1
                    if not to_start[c]:
                        j = sp - 2
                        while j >= 0 and st_func[j] != tf:
                            j -= 1
                    if j >= 0:
                        sp = j + 1                      # longjmp
                    else:
                        switch = True                   # tail call, or a switch
            if switch:
                up = st_node[sp - 2] if sp > 1 else -1
                st_node[sp - 1] = _child(up, tf, node_parent, node_func, node_weight, table,
                                         state)
                st_func[sp - 1] = tf
        prev = c
        i += 1
    if plain:
        node_weight[st_node[sp - 1]] += plain
    state[0] = prev
    state[1] = k
    state[2] = pending
    state[3] = sp
    state[5] = gi
    cur[0] = cur_func
    cur[1] = cur_class
    return i


_kernel: Any = None           # the compiled walk, False when it cannot be
_lock = threading.Lock()


def _compiled() -> Any:
    global _kernel, _rehash, _child
    if _kernel is None and jit.enabled():
        with _lock:
            if _kernel is None:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        from numba import njit

                        _child = njit(cache=True, nogil=True, inline="always")(_child)
                        _rehash = njit(cache=True, nogil=True)(_rehash)
                        _kernel = njit(cache=True, nogil=True)(_walk)
                except Exception:  # noqa: BLE001 - cannot compile here: Python it is
                    _kernel = False
    return _kernel or None
