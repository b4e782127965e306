"""analysis/contexts.py: collapsed stacks streamed over block ids equal the collapsed
stacks of call_trace over the decoded branches in memory (the second witness), compiled
and in Python, whatever the pieces, holes, gaps and threads; memory flat in the trace.

Block tables here lie over the fake symbol table of test_analysis.py: in each function
a block that calls, one that returns, a conditional, a jump, a system call, one that
ends with no branch; blocks outside every function (the signal restorer), a signal
handler's block (entered by an interrupt), one never completed. Random id sequences
make every hazard of call_trace happen: returns with no call, unwinding, lowered
baselines, tail calls, jumps into other functions, fall-through, sigreturns."""

from __future__ import annotations

import io
import tracemalloc
from dataclasses import dataclass

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from test_analysis import FUNCS, FakeSymbols, make_trace

from branchtrace.analysis.contexts import BlockFunctions, context_tree
from branchtrace.analysis.functions import FunctionIndex
from branchtrace.analysis.code import CodeReader
from branchtrace.decode import Carry
from branchtrace.model import BRANCH_DTYPE, BranchKind, Gap
from branchtrace.reporters import collapsed
from branchtrace.reporters.collapsed import BlockSource
from branchtrace.store.blocks import BLOCK_DTYPE, FLAG_ASYNC, FLAG_VALID

K = BranchKind


def _table() -> np.ndarray:
    rows = []
    for base in FUNCS.values():
        rows += [(base + 0x00, base + 0x08, base + 0x0d, K.CALL, FLAG_VALID),
                 (base + 0x0d, base + 0x10, base + 0x12, K.COND, FLAG_VALID),
                 (base + 0x12, base + 0x20, base + 0x21, K.RETURN, FLAG_VALID),
                 (base + 0x40, base + 0x48, base + 0x4a, K.JUMP, FLAG_VALID),
                 (base + 0x4a, base + 0x50, base + 0x52, K.SYSCALL, FLAG_VALID),
                 (base + 0x52, base + 0x58, base + 0x5c, K.OTHER, FLAG_VALID),
                 (base + 0x60, base + 0x66, base + 0x68, K.INDIRECT_CALL, FLAG_VALID)]
    rows += [(0x8000, 0x8004, 0x8006, K.SYSCALL, FLAG_VALID),        # the restorer
             (0x5000, 0x5004, 0x5006, K.COND, FLAG_VALID | FLAG_ASYNC),   # a handler
             (0x9000, 0x9004, 0x9006, K.RETURN, 0)]                  # never completed
    table = np.zeros(len(rows), BLOCK_DTYPE)
    for i, (start, last, end, kind, flags) in enumerate(rows):
        table[i] = (start, last, end, kind, flags, 1, 0)
    return table


TABLE = _table()


@dataclass(frozen=True)
class Piece:
    ids: np.ndarray
    after_hole: bool


def _thread(ids: np.ndarray, cuts: list[int], holes: set[int], lost: list[int]
            ) -> tuple[list[Piece], list[int], np.ndarray, list[int]]:
    """The ids cut into pieces (those in ``holes`` come after missing records), the
    file gaps at branch indices ``lost`` (in range), and what the whole-trace reader
    decodes: the branches, and the branch index of each hole."""
    bounds = sorted({0, len(ids), *[c % (len(ids) + 1) for c in cuts]})
    pieces = [Piece(ids[a:b], k in holes) for k, (a, b) in enumerate(zip(bounds, bounds[1:]))]
    carry = Carry(TABLE)
    parts, at_holes, n = [], [], 0
    for p in pieces:
        if p.after_hole:
            carry.cut()
            at_holes.append(n)
        part = carry.feed(p.ids)
        parts.append(part)
        n += len(part)
    branches = np.concatenate(parts) if parts else np.zeros(0, BRANCH_DTYPE)
    gaps = sorted({g % (n + 1) for g in lost})
    return pieces, gaps, branches, at_holes


def _both(threads: dict[int, tuple[list[Piece], list[int], np.ndarray, list[int]]],
          compiled: bool = True) -> tuple[str, str]:
    rows = {t: [(int(b["kind"]), int(b["from_ip"]), int(b["to_ip"])) for b in v[2]]
            for t, v in threads.items()}
    gaps = [Gap(t, i, 1, "lost") for t, v in threads.items() for i in v[1]] + \
        [Gap(t, i, 4, "hole") for t, v in threads.items() for i in v[3]]
    trace = make_trace([], gaps=gaps, threads={t: [(K(k), f, to) for k, f, to in r]
                                               for t, r in rows.items()})
    old, new = io.StringIO(), io.StringIO()
    collapsed.render(trace, old)
    source = BlockSource(TABLE, lambda t: (threads[t][0], threads[t][1]), compiled)
    collapsed.render(trace, new, source=source)
    return old.getvalue(), new.getvalue()


def _walkish(rng: np.random.Generator, n: int) -> np.ndarray:
    """Ids that often fall through into the next block (as code does), else jump."""
    ids = np.empty(n, np.uint32)
    cur = 0
    for i in range(n):
        cur = cur + 1 if rng.random() < 0.3 and cur + 1 < len(TABLE) else \
            int(rng.integers(0, len(TABLE) + 2))            # + ids the table does not know
        ids[i] = cur
    return ids


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 400),
       st.lists(st.integers(0, 10**6), max_size=6), st.sets(st.integers(0, 7), max_size=3),
       st.lists(st.integers(0, 10**6), max_size=3))
def test_streamed_stacks_are_call_traces_stacks(seed, n, cuts, holes, lost):
    ids = _walkish(np.random.default_rng(seed), n)
    old, new = _both({1: _thread(ids, cuts, holes, lost)})
    assert new == old


def test_in_python_as_compiled():
    rng = np.random.default_rng(7)
    threads = {t: _thread(_walkish(rng, 3000), [500, 1700, 2999], {2}, [40, 900])
               for t in (1, 2)}
    old, new = _both(threads, compiled=False)
    assert new == old
    assert old.count("thread 1;") > 10 and old.count("thread 2;") > 10
    assert _both(threads)[1] == new


def test_calls_returns_and_a_lowered_baseline_by_hand():
    """main calls f (block 0 of main -> f), f returns (block 2 of f -> main's block 1),
    then main returns into g, which the trace never saw call it: g becomes the bottom."""
    main, f, g = (list(FUNCS).index(x) * 7 for x in ("main", "f", "g"))
    ids = np.array([main + 0, f + 2, main + 1, main + 2, g + 1], np.uint32)
    pieces, gaps, branches, _ = _thread(ids, [2], set(), [])
    assert len(branches) == 3
    old, new = _both({1: (pieces, gaps, branches, [])})
    assert new == old == "g;main 2\ng;main;f 1\n"


def test_an_empty_piece_after_a_hole_still_cuts_the_pair():
    ids = _walkish(np.random.default_rng(11), 600)
    pieces, gaps, branches, at_holes = _thread(ids, [300], {1}, [])
    assert [p.after_hole for p in pieces] == [False, True]
    moved = [pieces[0], Piece(ids[:0], True), Piece(pieces[1].ids, False)]
    old, new = _both({1: (moved, gaps, branches, at_holes)})
    assert new == old


def _long(n: int) -> list[Piece]:
    """A loop in main that calls f, which returns: 4 branches per 5 ids."""
    main, f = (list(FUNCS).index(x) * 7 for x in ("main", "f"))
    one = np.tile(np.array([main, f + 1, f + 2, main + 1, main + 3], np.uint32), 1 << 14)
    return [Piece(one, False) for _ in range(n)]


def _peak(n: int) -> tuple[int, int]:
    functions = FunctionIndex(FakeSymbols())
    table = BlockFunctions(TABLE, functions, CodeReader(functions.symbolizer))
    context_tree(table, _long(1), [])                  # compiled and warm
    tracemalloc.start()
    try:
        tree = context_tree(table, iter(_long(n)), [])
        return tree.branches, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_branches():
    small, peak_small = _peak(8)                       # chunks in flight: at most 5
    big, peak_big = _peak(80)
    assert (small, big) == ((8 * 4 << 14) - 1, (80 * 4 << 14) - 1)   # none after the last id
    assert peak_big < peak_small * 1.5 + (256 << 10), (peak_small, peak_big)
