"""Count the runs and taken pairs of one thread's block ids (decode/runs.py says what
they are), in one pass, without decoding the branches.

Compiled with numba when it is installed: one loop over the ids applies the rule of
``decode_blocks`` to each consecutive pair and, at each taken one, counts the run key
(entry id, exit id, INTERRUPT bit) and the pair (exit id, next id), each in a slot per
exit id or, when that slot holds another key, in an open-addressing hash table (as
decode/pairs.py). numpy otherwise (``taken_pairs`` and ``np.unique`` per piece: slower,
same result). A long thread can be cut into stretches counted at once: each starts
after a known id and keeps the exit of the run that began before it apart, and
:func:`combine` joins them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from . import table_columns, taken_pairs
from .hashing import EMPTY, Compiled, hash_insert
from ..model import BranchKind
from ..store.blocks import FLAG_ASYNC, FLAG_FOREIGN, FLAG_HOOKED, FLAG_VALID, HOOK_RESUME_SPAN
from .pairs import merge_edges, summed
from .runs import RunCounts, runs_summed

#: Block tables up to this many rows pack a run key (entry + 1, exit, bit) in 64 bits.
MAX_ROWS = 1 << 30


def _count(ids, state, heads, start, end, flags, n, span,  # type: ignore[no-untyped-def]
           valid, foreign, hooked, async_flag, rcache, rcount, rkeys, rcounts, rshift,
           ecache, ecount, ekeys, ecounts, eshift):
    """Count the run keys and taken pairs of ``ids`` (after ``state``'s carried id).

    Each kind of key has a direct-mapped slot per exit id (``rcache``/``ecache``: the
    first key seen there, with its count): most blocks are left by one branch to one
    target, entered from one place. Other keys go to a hash table (at most half full:
    the caller makes room). ``state``: previous id (-1: none), entry id of the open run
    (-1: the next branch is a head; -2: the run began before these ids, its exit is
    kept apart), branches so far, next index into ``heads`` (branch indices that follow
    a gap, sorted), used slots of both tables, the first branch's ids, the last branch's
    target id, the exit id and INTERRUPT bit of the run that began before."""
    prev, entry, nb, gi = state[0], state[1], state[2], state[3]
    rused, eused = state[4], state[5]
    rmask, emask = np.uint64(len(rkeys) - 1), np.uint64(len(ekeys) - 1)
    mul = np.uint64(0x9E3779B97F4A7C15)
    while gi < heads.shape[0] and heads[gi] < nb:
        gi += 1
    head = heads[gi] if gi < heads.shape[0] else np.int64(-1)
    for i in range(ids.shape[0]):
        cur = min(np.int64(ids[i]), n)
        if prev >= 0 and start[cur] != end[prev] \
                and (flags[prev] & flags[cur] & (valid | foreign)) == valid \
                and not ((flags[prev] & hooked) != 0
                         and start[prev] <= start[cur] <= start[prev] + span):
            if nb == head:
                entry = -1
                while gi < heads.shape[0] and heads[gi] <= nb:
                    gi += 1
                head = heads[gi] if gi < heads.shape[0] else np.int64(-1)
            bit = np.uint64(1) if (flags[cur] & async_flag) != 0 else np.uint64(0)
            if entry == -2:                   # the run began before this piece of ids
                state[9], state[10] = prev, np.int64(bit)
            else:
                key = (np.uint64(entry + 1) << np.uint64(33)) \
                    | (np.uint64(prev) << np.uint64(1)) | bit
                slot = rcache[prev]
                if slot == key:
                    rcount[prev] += 1
                elif slot == EMPTY:
                    rcache[prev] = key
                    rcount[prev] = 1
                else:
                    h = (key * mul) >> np.uint64(rshift)
                    while True:
                        k = rkeys[h]
                        if k == key:
                            rcounts[h] += 1
                            break
                        if k == EMPTY:
                            rkeys[h] = key
                            rcounts[h] = 1
                            rused += 1
                            break
                        h = (h + np.uint64(1)) & rmask
            key = (np.uint64(prev) << np.uint64(32)) | np.uint64(cur)
            slot = ecache[prev]
            if slot == key:
                ecount[prev] += 1
            elif slot == EMPTY:
                ecache[prev] = key
                ecount[prev] = 1
            else:
                h = (key * mul) >> np.uint64(eshift)
                while True:
                    k = ekeys[h]
                    if k == key:
                        ecounts[h] += 1
                        break
                    if k == EMPTY:
                        ekeys[h] = key
                        ecounts[h] = 1
                        eused += 1
                        break
                    h = (h + np.uint64(1)) & emask
            if nb == 0:
                state[6], state[7] = prev, cur
            entry = cur
            nb += 1
        prev = cur
    if nb > state[2]:
        state[8] = entry
    state[0], state[1], state[2], state[3], state[4], state[5] = prev, entry, nb, gi, rused, eused


_KERNELS = Compiled(_count, hash_insert)
_compiled = _KERNELS.get


class _Table:
    """Distinct 64-bit keys with counts (numba): a slot per block id, and a hash table
    at most half full."""

    def __init__(self, rows: int) -> None:
        self.cache = np.full(rows, EMPTY, np.uint64)
        self.cache_counts = np.zeros(rows, np.uint64)
        self.keys = np.full(1 << 12, EMPTY, np.uint64)
        self.counts = np.zeros(1 << 12, np.uint64)
        self.shift = 64 - 12

    def room(self, need: int, insert: Any) -> None:
        size = len(self.keys)
        if need * 2 <= size:
            return
        while need * 2 > size:
            size *= 2
        full = self.keys != EMPTY
        old_keys, old_counts = self.keys[full], self.counts[full]
        self.keys = np.full(size, EMPTY, np.uint64)
        self.counts = np.zeros(size, np.uint64)
        self.shift = 64 - (size.bit_length() - 1)
        insert(old_keys, old_counts, self.keys, self.counts, self.shift)

    def args(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
        return self.cache, self.cache_counts, self.keys, self.counts, self.shift

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """The keys (distinct: a key in a slot never goes to the table) and counts."""
        full, used = self.keys != EMPTY, self.cache != EMPTY
        return (np.concatenate([self.cache[used], self.keys[full]]),
                np.concatenate([self.cache_counts[used], self.counts[full]]))


class RunCounter:
    """Counts the runs and taken pairs of one thread's block ids, fed in order.
    ``heads``: the branch indices a gap of the file lies before (sorted); :meth:`cut`
    where records are missing (no pair across it, and the next branch is a head).

    ``after``: the counter takes the ids that follow id ``after`` (a later stretch of
    the thread, counted in parallel: the run open at its start is finished by
    :func:`combine`, which also shifts the branch indices; no ``heads`` then)."""

    def __init__(self, blocks: np.ndarray, heads: Iterable[int] = (), compiled: bool = True,
                 after: int | None = None) -> None:
        self.blocks = blocks
        self.columns = table_columns(blocks)
        self.heads = np.asarray(sorted(heads), dtype=np.int64)
        self.kernel = _compiled() if compiled and len(blocks) < MAX_ROWS else None
        # prev, entry, branches, heads index, used (runs, edges), first (exit, next),
        # last target, the open run's (exit, bit)
        self.state = np.array([-1, -1, 0, 0, 0, 0, -1, -1, -1, -1, 0], np.int64)
        if after is not None:
            assert self.kernel is not None and not len(self.heads)
            self.state[0], self.state[1] = min(after, len(blocks)), -2
        self.runs, self.edges = _Table(len(blocks) + 1), _Table(len(blocks) + 1)
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self.cut_at: list[int] = []

    @property
    def branches(self) -> int:
        return int(self.state[2])

    def feed(self, ids: np.ndarray) -> None:
        if len(ids) == 0:
            return
        if self.kernel is None:
            self._feed_numpy(ids)
            return
        s = self.state
        self.runs.room(int(s[4]) + len(ids), self.kernel[1])
        self.edges.room(int(s[5]) + len(ids), self.kernel[1])
        start, end, _, _, flags = self.columns
        self.kernel[0](ids, s, self.heads, start, end, flags, np.int64(len(start) - 1),
                       np.uint64(HOOK_RESUME_SPAN), np.uint8(FLAG_VALID),
                       np.uint8(FLAG_FOREIGN), np.uint8(FLAG_HOOKED), np.uint8(FLAG_ASYNC),
                       *self.runs.args(), *self.edges.args())

    def cut(self) -> None:
        self.state[0] = self.state[1] = -1
        self.cut_at.append(self.branches)

    def _feed_numpy(self, ids: np.ndarray) -> None:
        s = self.state
        seq = ids.astype(np.int64)
        np.minimum(seq, len(self.blocks), out=seq)
        if s[0] >= 0:
            seq = np.concatenate([s[:1], seq])
        s[0] = seq[-1]
        if len(seq) < 2:
            return
        at, _ = taken_pairs(seq[:-1].astype(np.uint32), seq[1:].astype(np.uint32),
                            self.blocks)
        if not len(at):
            return
        exits, nexts = seq[at], seq[at + 1]
        nb = int(s[2])
        entries = np.concatenate([s[1:2], nexts[:-1]])
        entries[np.isin(np.arange(nb, nb + len(at)), self.heads)] = -1
        if nb == 0:
            s[6], s[7] = exits[0], nexts[0]
        s[1], s[2], s[8] = nexts[-1], nb + len(at), nexts[-1]
        bit = ((self.columns[4][nexts] & FLAG_ASYNC) != 0).astype(np.uint64)
        rkeys = ((entries + 1).astype(np.uint64) << np.uint64(33)) \
            | (exits.astype(np.uint64) << np.uint64(1)) | bit
        ekeys = (exits.astype(np.uint64) << np.uint64(32)) | nexts.astype(np.uint64)
        ru, rc = np.unique(rkeys, return_counts=True)
        eu, ec = np.unique(ekeys, return_counts=True)
        self.parts.append((ru, rc.astype(np.uint64), eu, ec.astype(np.uint64)))
        if len(self.parts) >= 64:
            self.parts = [_summed_keys(self.parts)]

    def keys(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(run keys, their counts, pair keys, their counts); keys distinct."""
        if self.kernel is not None:
            return (*self.runs.items(), *self.edges.items())
        if self.parts:
            return _summed_keys(self.parts)
        z = np.zeros(0, np.uint64)
        return z, z, z, z

    def result(self) -> RunCounts:
        return combine([self])


def _summed_keys(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    out: list[np.ndarray] = []
    for k in (0, 2):
        keys = np.concatenate([p[k] for p in parts])
        counts = np.concatenate([p[k + 1] for p in parts])
        u, inverse = np.unique(keys, return_inverse=True)
        out += [u, np.bincount(inverse, weights=counts, minlength=len(u)).astype(np.uint64)]
    return out[0], out[1], out[2], out[3]


def combine(counters: list[RunCounter]) -> RunCounts:
    """The RunCounts of a thread counted by ``counters`` (consecutive stretches of its
    ids, the first one from the start), their distinct keys decoded into addresses."""
    parts = [c.keys() for c in counters]
    entry, n, cut_at = -1, 0, []              # the run open where the next stretch begins
    last_to = -1
    first_ids: tuple[int, int] | None = None
    open_runs: list[int] = []
    for c in counters:
        s = c.state
        if s[9] >= 0:                         # the run that began in a stretch before
            open_runs.append(((entry + 1) << 33) | (int(s[9]) << 1) | int(s[10]))
        if s[1] != -2:
            entry = int(s[1])
        if s[2] and first_ids is None:
            first_ids = (int(s[6]), int(s[7]))
        if s[2]:
            last_to = int(s[8])
        cut_at += [n + k for k in c.cut_at]
        n += int(s[2])
    if open_runs:
        parts.append((np.array(open_runs, np.uint64), np.ones(len(open_runs), np.uint64),
                      np.zeros(0, np.uint64), np.zeros(0, np.uint64)))
    rk, rc, ek, ec = _summed_keys(parts) if len(parts) > 1 else parts[0]
    blocks = counters[0].blocks
    start, _, last, kind, flags = counters[0].columns
    entry1 = (rk >> np.uint64(33)).astype(np.int64)
    exits = ((rk >> np.uint64(1)) & np.uint64(0xFFFF_FFFF)).astype(np.int64)
    run_start = np.where(entry1 == 0, last[exits], start[np.maximum(entry1 - 1, 0)])
    interrupt = ((rk & np.uint64(1)) != 0) | (kind[exits] == BranchKind.INTERRUPT)
    runs = runs_summed(run_start, last[exits], interrupt.astype(np.uint8), rc)
    index, branches = taken_pairs((ek >> np.uint64(32)).astype(np.uint32),
                                  (ek & np.uint64(0xFFFF_FFFF)).astype(np.uint32), blocks)
    edges = summed(branches["from_ip"], branches["to_ip"], branches["kind"], ec[index])
    bad = edges["kind"] > max(BranchKind)
    if bad.any():                                 # as the decoded branches show them: OTHER
        edges["kind"][bad] = BranchKind.OTHER
        edges = merge_edges([edges])
    if first_ids is None:
        return RunCounts(0, runs, edges, None, False, False, None, False)
    heads = counters[0].heads
    first_exit, first_next = first_ids
    return RunCounts(
        n, runs, edges, int(last[first_exit]),
        bool(flags[first_next] & FLAG_ASYNC) or int(kind[first_exit]) == BranchKind.INTERRUPT,
        bool(0 in cut_at or (len(heads) > 0 and heads[0] == 0)), int(start[last_to]),
        bool(n in cut_at or (len(heads) > 0 and heads[-1] >= n)))
