"""The compiled loops of :mod:`.contexts`: the filter that pairs block ids into taken
branches and keeps those that may change the stack, and the walk that replays
:func:`~.callstack.call_trace`'s stack rules on them over a calling-context tree.

numba compiles them when it is installed (decode/jit.py says when: ``BRANCHTRACE_JIT=0``
turns it off); without it they run as they are, in Python: the same results, a hundred
times slower. Arrays only, no objects: the caller owns the state (an int64 array of
scalars carried from chunk to chunk) and makes room when the walk stops early.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any, no_type_check

import numpy as np

from ..decode import jit

_MUL = np.uint64(0x9E3779B97F4A7C15)
_MIX = np.uint64(0xC2B2AE3D27D4EB4F)


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
def _opened(row_func, row_pos, state, func, at, depth):
    """A frame of ``func`` opens at position ``at`` (a row when rows are kept)."""
    r = state[7]
    if r < len(row_func):
        row_func[r] = func
        row_pos[r, 0] = at
        row_pos[r, 1] = -1
        row_pos[r, 2] = depth
        row_pos[r, 3] = -1
        state[7] = r + 1


@no_type_check    # compiled by numba (or run as it is without it)
def _closed(row_func, row_pos, state, st_func, st_open, lo, hi, at):
    """The frames in stack slots ``hi - 1`` down to ``lo`` close at position ``at``."""
    if len(row_func) == 0:
        return
    r = state[7]
    for i in range(hi - 1, lo - 1, -1):
        row_func[r] = st_func[i]
        row_pos[r, 0] = st_open[i]
        row_pos[r, 1] = at
        row_pos[r, 2] = state[8] + i
        row_pos[r, 3] = st_open[i - 1] if i > 0 else 0
        r += 1
    state[7] = r


@no_type_check    # compiled by numba (or run as it is without it)
def rehash(node_parent, node_func, used, table, shift):
    """Put nodes 0..used-1 into an empty hash table."""
    mask = np.uint64(len(table) - 1)
    for j in range(used):
        h = ((node_func[j] ^ (np.uint64(node_parent[j] + 1) * _MIX)) * _MUL) >> np.uint64(shift)
        while table[h] >= 0:
            h = (h + np.uint64(1)) & mask
        table[h] = j


@no_type_check    # compiled by numba (or run as it is without it)
def filter_ids(ids, before, k, gaps, rows, flags, start, n, span, to_class, out):
    """The taken branches of ``ids`` (pairs of consecutive ids, decode_blocks' rules)
    that may change the stack, into ``out`` (rows: from id, to id, branches before it
    that did not); the others are only counted. The first taken branch is always out
    (the function the thread is in is not known here), and the ones at ``gaps``
    (branch indices, the first branch being ``k``); ``before``: the id before ``ids``
    (the pair across a chunk edge; -1: none). Returns (rows out, branches after the
    last one)."""
    m = 0
    plain = 0
    gi = 0
    while gi < len(gaps) and gaps[gi] < k:
        gi += 1
    next_gap = gaps[gi] if gi < len(gaps) else -1
    cur_class = np.uint32(0xFFFF_FFFD)          # no class: the first taken branch is out
    span64 = np.uint64(span)
    first = 1
    prev = min(np.int64(ids[0]), n)
    if before >= 0:
        first = 0
        prev = min(np.int64(before), n)
    # the previous block's columns stay in locals from one id to the next
    p_end = rows[prev, 1]
    p_class = rows[prev, 2]
    p_flags = flags[prev]
    for i in range(first, len(ids)):
        c = min(np.int64(ids[i]), n)
        c_flags = flags[c]
        # taken, and whether it changes no stack, as 0 or 1: which way they go cannot
        # be predicted, so the usual case adds without a jump
        taken = np.int64((rows[c, 0] != p_end) & ((p_flags & c_flags & 3) == 1))
        if (p_flags & 16) != 0 and start[prev] <= start[c] <= start[prev] + span64:
            taken = 0
        usual = np.int64((p_class == cur_class) & (rows[c, 3] == cur_class)
                         & (k != next_gap))
        if taken <= usual:
            plain += taken
            k += taken
        else:
            out[m, 0] = prev
            out[m, 1] = c
            out[m, 2] = plain
            m += 1
            plain = 0
            cur_class = to_class[c]
            while gi < len(gaps) and gaps[gi] <= k:
                gi += 1
            next_gap = gaps[gi] if gi < len(gaps) else -1
            k += 1
        prev = c
        p_end = rows[c, 1]
        p_class = rows[c, 2]
        p_flags = c_flags
    return m, plain


@no_type_check    # compiled by numba (or run as it is without it)
def walk(events, e, m, start, last, op_of, from_func, to_func, to_start, lo_of, hi_of,  # noqa: C901, PLR0912, PLR0915
          flags, gaps, state, cur, st_node, st_func, st_lo, st_hi, st_sig, st_open,
          node_parent, node_func, node_weight, table, row_func, row_pos):
    """Replay the stack rules on the branches ``events[e:m]`` (from filter_ids); returns
    where it stopped (before ``m`` when the stack, the nodes or the rows need room).

    With room for rows (``row_func``, ``row_pos``: state[7] used), each frame that opens
    or closes is also a row, in the order call_trace's frames open and close: an
    opening (function; position, -1, depth, -1) or a closing (function; its opening
    position, the position it closes at, depth, the opening position of the frame
    under it: 0 for the bottom frame, which a frame from position 0 may come under).
    Positions are call_trace's (``2 * r`` the start of run r, ``2 * r + 1`` a point
    within it); depths count from the
    thread's first frame (state[8]: the depth of the bottom slot, below 0 once the
    thread returned below its first frame). A frame put under the stack when the
    thread returns out of its bottom frame opened at 0 (its closing says so), but its
    opening row is where that return is: rows are never written back."""
    k = state[1]
    pending = state[2]
    sp = state[3]
    gi = state[5]
    cur_func = cur[0]
    room_stack = len(st_node) - 2
    room_nodes = len(node_parent) - 2
    no_sig = np.uint64(0xFFFF_FFFF_FFFF_FFFF)
    keep = len(row_func) > 0
    while e < m:
        if sp > room_stack or state[4] > room_nodes:
            break                                   # the caller makes room
        if keep and state[7] + 2 * sp + 8 > len(row_func):
            break                                   # the caller takes the rows
        plain = events[e, 2]
        if plain:
            node_weight[st_node[sp - 1]] += plain
            k += plain
        p = events[e, 0]
        c = events[e, 1]
        gap = pending != 0
        while gi < len(gaps) and gaps[gi] <= k:
            if gaps[gi] == k:
                gap = True
            gi += 1
        pending = 0
        ff = from_func[p]
        tf = to_func[c]
        half = 2 * k + 1                            # a point within run k
        if k == 0:                                  # the first frame
            st_node[0] = _child(-1, ff, node_parent, node_func, node_weight, table, state)
            st_func[0] = ff
            st_lo[0] = 1
            st_hi[0] = 0
            st_sig[0] = no_sig
            if keep:
                st_open[0] = 0
            if keep:
                _opened(row_func, row_pos, state, ff, 0, state[8])
            sp = 1
        elif gap:                                   # resume after a gap
            if st_func[sp - 1] != ff:
                j = sp - 2
                while j >= 0 and st_func[j] != ff:
                    j -= 1
                if j >= 0:
                    if keep:
                        _closed(row_func, row_pos, state, st_func, st_open, j + 1, sp, half)
                    sp = j + 1
                else:
                    st_node[sp] = _child(st_node[sp - 1], ff, node_parent, node_func,
                                         node_weight, table, state)
                    st_func[sp] = ff
                    st_lo[sp] = 1
                    st_hi[sp] = 0
                    st_sig[sp] = no_sig
                    if keep:
                        st_open[sp] = half
                    if keep:
                        _opened(row_func, row_pos, state, ff, half, state[8] + sp)
                    sp += 1
        elif ff != cur_func:                        # fell through into another function
            up = st_node[sp - 2] if sp > 1 else -1
            st_node[sp - 1] = _child(up, ff, node_parent, node_func, node_weight, table,
                                     state)
            if keep:
                _closed(row_func, row_pos, state, st_func, st_open, sp - 1, sp, half)
            st_func[sp - 1] = ff
            if keep:
                st_open[sp - 1] = half
            if keep:
                _opened(row_func, row_pos, state, ff, half, state[8] + sp - 1)
        node_weight[st_node[sp - 1]] += 1
        k += 1
        at = 2 * k                                  # the start of run k + 1
        cur_func = tf
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
            if keep:
                st_open[sp] = at
            if keep:
                _opened(row_func, row_pos, state, tf, at, state[8] + sp)
            sp += 1
        elif op == 2:                               # return
            if sp > 1 and st_lo[sp - 1] <= target <= st_hi[sp - 1] and st_func[sp - 2] == tf:
                if keep:
                    _closed(row_func, row_pos, state, st_func, st_open, sp - 1, sp, at)
                sp -= 1
            else:
                j = sp - 1
                while j > 0 and not (st_lo[j] <= target <= st_hi[j] and st_func[j - 1] == tf):
                    j -= 1
                if j > 0:
                    if keep:
                        _closed(row_func, row_pos, state, st_func, st_open, j, sp, at)
                    sp = j
                else:
                    j = sp - 2
                    while j >= 0 and st_func[j] != tf:
                        j -= 1
                    if j >= 0:
                        if keep:
                            _closed(row_func, row_pos, state, st_func, st_open, j + 1, sp, at)
                        sp = j + 1
                    elif st_sig[sp - 1] != no_sig:
                        switch = True               # a handler returns to the restorer
                    elif sp == 1:                   # lower: a new bottom frame
                        if keep:
                            _closed(row_func, row_pos, state, st_func, st_open, 0, 1, at)
                        state[8] -= 1
                        if keep:
                            st_open[0] = 0
                        if keep:
                            _opened(row_func, row_pos, state, tf, at, state[8])
                        j = state[4]
                        state[4] = j + 1
                        node_parent[j] = -1
                        node_func[j] = tf
                        node_weight[j] = 0
                        for x in range(j):
                            if node_parent[x] == -1:
                                node_parent[x] = j
                        table[:] = -1
                        rehash(node_parent, node_func, j + 1, table, state[6])
                        st_node[0] = j
                        st_func[0] = tf
                        st_lo[0] = 1
                        st_hi[0] = 0
                        st_sig[0] = no_sig
                    else:                           # back to a caller we never saw
                        if keep:
                            _closed(row_func, row_pos, state, st_func, st_open, sp - 1, sp, at)
                        sp -= 1
                        switch = True
        elif op == 3:                               # interrupt
            st_node[sp] = _child(st_node[sp - 1], tf, node_parent, node_func, node_weight,
                                 table, state)
            st_func[sp] = tf
            st_lo[sp] = 1
            st_hi[sp] = 0
            st_sig[sp] = last[p]                    # where the thread was
            if keep:
                st_open[sp] = at
            if keep:
                _opened(row_func, row_pos, state, tf, at, state[8] + sp)
            sp += 1
        else:
            done = False
            if op == 4:                             # sigreturn?
                j = sp - 1
                while j > 0 and st_sig[j] != target:
                    j -= 1
                if j > 0:
                    if keep:
                        _closed(row_func, row_pos, state, st_func, st_open, j, sp, at)
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
                    if keep:
                        _closed(row_func, row_pos, state, st_func, st_open, j + 1, sp, at)
                    sp = j + 1                      # longjmp
                else:
                    switch = True                   # tail call, or a switch
        if switch:
            up = st_node[sp - 2] if sp > 1 else -1
            st_node[sp - 1] = _child(up, tf, node_parent, node_func, node_weight, table,
                                     state)
            if keep:
                _closed(row_func, row_pos, state, st_func, st_open, sp - 1, sp, at)
            st_func[sp - 1] = tf
            if keep:
                st_open[sp - 1] = at
            if keep:
                _opened(row_func, row_pos, state, tf, at, state[8] + sp - 1)
        e += 1
    state[1] = k
    state[2] = pending
    state[3] = sp
    state[5] = gi
    cur[0] = cur_func
    return e


_kernel: Any = None           # the compiled (filter, walk), False when they cannot be
_lock = threading.Lock()


def compiled() -> Any:
    """(filter, walk) compiled, or None (no numba, or it cannot compile here)."""
    global _kernel, rehash, _child, _opened, _closed
    if _kernel is None and jit.enabled():
        with _lock:
            if _kernel is None:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        from numba import njit

                        _child = njit(cache=True, nogil=True, inline="always")(_child)
                        _opened = njit(cache=True, nogil=True, inline="always")(_opened)
                        _closed = njit(cache=True, nogil=True, inline="always")(_closed)
                        rehash = njit(cache=True, nogil=True)(rehash)
                        _kernel = (njit(cache=True, nogil=True)(filter_ids),
                                   njit(cache=True, nogil=True)(walk))
                except Exception:  # noqa: BLE001 - cannot compile here: Python it is
                    _kernel = False
    return _kernel or None
