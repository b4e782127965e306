"""Where the last function segments of a thread begin, without the stack pass in Python.

``history --last N`` numbers its lines from the thread's start and indents them by the
depth of a stack rebuilt from the start: the Python stack pass
(:class:`~.callstream.CallStream`) over a 600M-branch thread takes minutes. This module
replays the same stack rules, compiled (the walk of :mod:`.stackwalk` without its
calling-context tree), over the thread's block ids chunk by chunk: it counts the
segments :class:`~.callstream.CallStream` would make and keeps, at chunk boundaries,
what the stack pass needs to go on from there (the stack's functions and return
ranges, its depth, the segment under way). The caller then runs the Python pass over
the last chunks only, from the latest boundary whose segment under way is not among
the last N: the lines are those of the whole pass, byte for byte.

Only for threads without gaps (a gap's place needs the decoded branches) and when
numba compiles the walk; the caller reads the thread forward otherwise.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, no_type_check

import numpy as np

from . import stackwalk
from .contexts import BlockFunctions, IdPiece, ahead

_K, _SP, _COUNT, _BASE, _LOWEST, _OPEN = range(6)
_NO_SIG = 0xFFFF_FFFF_FFFF_FFFF
_WORKERS = 2


class NotHere(Exception):
    """The thread cannot be walked here (a hole among its chunks)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The stack pass after the branches of a thread's first ``chunk`` chunks."""

    chunk: int              # chunks before this point
    branches: int           # branches before it (K): the next one is branch K
    before: int             # branches before the chunk ahead of it (chunk - 1)
    segments: int           # segments so far, the one under way included
    lowest: int             # the shallowest depth so far (<= 0)
    open_first: int         # the first run of the segment under way
    function: int           # the function key of the last branch's target
    stack_func: np.ndarray  # uint64 per frame, bottom first; depth = base + position
    stack_lo: np.ndarray    # uint64: where a return out of it lands (lo..hi)
    stack_hi: np.ndarray
    stack_sig: np.ndarray   # uint64: a signal handler's interrupted address, else all ones
    base: int               # the depth of the bottom frame


@no_type_check    # compiled by numba (or run as it is without it)
def walk(events, e, m, start, last, op_of, from_func, to_func, to_start, lo_of, hi_of,  # noqa: C901, PLR0912, PLR0915
         flags, state, cur, st_func, st_lo, st_hi, st_sig):
    """:func:`.stackwalk.walk` (no gaps) counting the segments callstack._Walk appends;
    returns where it stopped (before ``m`` when the stack needs room)."""
    k = state[0]
    sp = state[1]
    count = state[2]
    base = state[3]
    lowest = state[4]
    r_open = state[5]
    cur_func = cur[0]
    room = len(st_func) - 2
    no_sig = np.uint64(0xFFFF_FFFF_FFFF_FFFF)
    while e < m:
        if sp > room:
            break
        k += events[e, 2]
        p = events[e, 0]
        c = events[e, 1]
        ff = from_func[p]
        tf = to_func[c]
        if k == 0:                                  # the first frame, segment 1
            st_func[0] = ff
            st_lo[0] = 1
            st_hi[0] = 0
            st_sig[0] = no_sig
            sp = 1
            count += 1
            r_open = 0
        elif ff != cur_func:                        # fell through: a switch within run k
            st_func[sp - 1] = ff
            count += 1
            r_open = k
        k += 1
        cur_func = tf
        op = op_of[p]
        if (flags[c] & 32) != 0:
            op = 3
        target = start[c]
        switch = False
        if op == 1:                                 # call
            st_func[sp] = tf
            st_lo[sp] = lo_of[p]
            st_hi[sp] = hi_of[p]
            st_sig[sp] = no_sig
            sp += 1
            count += 1
            r_open = k
        elif op == 2:                               # return: always one segment
            count += 1
            r_open = k
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
                        base -= 1
                        if base < lowest:
                            lowest = base
                        st_func[0] = tf
                        st_lo[0] = 1
                        st_hi[0] = 0
                        st_sig[0] = no_sig
                    else:                           # back to a caller we never saw
                        sp -= 1
                        switch = True
        elif op == 3:                               # interrupt
            st_func[sp] = tf
            st_lo[sp] = 1
            st_hi[sp] = 0
            st_sig[sp] = last[p]
            sp += 1
            count += 1
            r_open = k
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
                    count += 1
                    r_open = k
            if not done and (op != 0 or ff != tf) and st_func[sp - 1] != tf:
                count += 1
                r_open = k
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
            st_func[sp - 1] = tf
        e += 1
    state[0] = k
    state[1] = sp
    state[2] = count
    state[3] = base
    state[4] = lowest
    state[5] = r_open
    cur[0] = cur_func
    return e


_kernel: Any = None


def compiled() -> Any:
    """(filter, segment walk) compiled, or None."""
    global _kernel
    if _kernel is None:
        kernels = stackwalk.compiled()
        if kernels is None:
            _kernel = False
        else:
            try:
                from numba import njit
                _kernel = (kernels[0], njit(cache=True, nogil=True)(walk))
            except Exception:  # noqa: BLE001 - cannot compile here
                _kernel = False
    return _kernel or None


class SegmentWalk:
    """The segment count of one thread, fed chunk by chunk, keeping the snapshots that
    a reader of its last ``need`` segments may start from."""

    def __init__(self, table: BlockFunctions, need: int, kernel: Any) -> None:
        self.table, self.need, self.kernel = table, need, kernel
        self.state = np.zeros(6, np.int64)
        self.cur = np.zeros(1, np.uint64)
        self.stack = [np.zeros(64, np.uint64) for _ in range(4)]
        self.chunks = 0
        self.prev_k = 0
        self.snaps: deque[Snapshot] = deque()

    @property
    def segments(self) -> int:
        return int(self.state[_COUNT])

    @property
    def lowest(self) -> int:
        return int(self.state[_LOWEST])

    def filter(self, ids: np.ndarray, before: int) -> tuple[np.ndarray, int, int]:
        t = self.table
        out = np.empty((len(ids) if before >= 0 else len(ids) - 1, 3), np.int64)
        m, tail = self.kernel[0](ids, before, self.state[_K], _NO_GAPS, t.rows, t.flags, t.start,
                                 t.sentinel, stackwalk_span(), t.to_class, out)
        return out[:m].copy(), int(m), int(tail)

    def feed(self, events: np.ndarray, m: int, tail: int) -> None:
        t, at = self.table, 0
        while True:
            st = self.stack
            at = int(self.kernel[1](events, at, m, t.start, t.last, t.op, t.from_func,
                                    t.to_func, t.to_start, t.lo, t.hi, t.flags, self.state,
                                    self.cur, st[0], st[1], st[2], st[3]))
            if at == m:
                break
            self.stack = [np.concatenate([a, np.zeros_like(a)]) for a in self.stack]
        self.state[_K] += tail
        self.chunks += 1
        self._snap()

    def _snap(self) -> None:
        s = self.state
        k, count = int(s[_K]), int(s[_COUNT])
        if count:
            sp = int(s[_SP])
            func, lo, hi, sig = (a[:sp].copy() for a in self.stack)
            self.snaps.append(Snapshot(
                self.chunks, k, self.prev_k, count, int(s[_LOWEST]), int(s[_OPEN]),
                int(self.cur[0]), func, lo, hi, sig, int(s[_BASE])))
        self.prev_k = k
        # the oldest is not needed once the next one is far enough from the end
        while len(self.snaps) > 1 and self.snaps[1].segments + self.need <= count:
            self.snaps.popleft()

    def choice(self) -> Snapshot | None:
        """The latest snapshot whose segment under way is not among the last ``need``
        and after a chunk with a branch (its last target is known); None: from the
        start."""
        total = self.segments
        best = None
        for snap in self.snaps:
            if snap.segments + self.need <= total and snap.branches > snap.before:
                best = snap
        return best


_NO_GAPS = np.zeros(0, np.int64)


def stackwalk_span() -> int:
    from ..store.blocks import HOOK_RESUME_SPAN
    return HOOK_RESUME_SPAN


def segment_walk(table: BlockFunctions, pieces: list[IdPiece] | Any, need: int) -> SegmentWalk:
    """Walk a thread's block ids (``pieces``, in order, no hole among them: else
    :class:`NotHere`), keeping what a reader of its last ``need`` segments starts from."""
    kernel = compiled()
    if kernel is None:
        raise NotHere("the compiled walk is not available")
    sw = SegmentWalk(table, need, kernel)
    pool = ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="branchtrace-filter")
    try:
        pending: deque[Future[tuple[np.ndarray, int, int]]] = deque()
        last = -1
        for piece in ahead(pieces):
            if piece.after_hole:
                raise NotHere("records are missing")
            ids = piece.ids
            if len(ids):                                # (the branch across the chunk edge)
                pending.append(pool.submit(sw.filter, ids, last))
                last = int(ids[-1])
            else:
                pending.append(_done((np.zeros((0, 3), np.int64), 0, 0)))
            while len(pending) > 2 * _WORKERS:
                sw.feed(*pending.popleft().result())
        while pending:
            sw.feed(*pending.popleft().result())
    finally:
        pool.shutdown(cancel_futures=True)
    return sw


def _done(value: tuple[np.ndarray, int, int]) -> Future[tuple[np.ndarray, int, int]]:
    f: Future[tuple[np.ndarray, int, int]] = Future()
    f.set_result(value)
    return f
