"""Coverage of a trace whose branches come piece by piece (a trace file read chunk by
chunk), in memory that grows with the distinct runs and edges, never with the branches.

The rules are :func:`~.coverage.compute`'s, applied to one piece at a time: a run goes
from a branch's target to the end of the next branch's instruction; the branch before a
piece pairs with the piece's first (the last branch is carried over); a gap breaks the
pair and makes the next branch a head (its own instruction ran, nothing before it);
the thread's first branch starts at ``first_ips`` when known; after the last branch the
tail is followed as there. Runs and edges are summed per piece into tables of distinct
rows, merged as they grow. A test checks that the result equals ``compute`` over the
whole trace in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import numpy as np

from ..decode.pairs import merge_edges, summed
from ..model import BranchKind, Gap
from .code import CodeReader
from .coverage import (
    EDGE_DTYPE,
    MAX_RUN,
    Coverage,
    _split_blocks,
    instruction_lengths,
    straight_line_end,
    unique_rows,
)

if TYPE_CHECKING:
    from ..trace import Trace

#: The branches of one thread, oldest first: arrays of BRANCH_DTYPE, and gaps.
Source = Callable[[int], Iterable["np.ndarray | Gap"]]
_MERGE_EVERY = 64


class _Lengths:
    """Instruction lengths at branch sources, each distinct address decoded once."""

    def __init__(self, reader: CodeReader) -> None:
        self.reader = reader
        self.known = np.zeros(0, np.uint64)
        self.sizes = np.zeros(0, np.uint64)
        self.unknown = 0

    def __call__(self, addresses: np.ndarray) -> np.ndarray:
        u, inverse = np.unique(addresses, return_inverse=True)
        at = np.searchsorted(self.known, u)
        have = (at < len(self.known)) & (self.known[np.minimum(at, len(self.known) - 1)] == u) \
            if len(self.known) else np.zeros(len(u), bool)
        new = u[~have]
        if len(new):
            sizes, unknown = instruction_lengths(self.reader, new)
            self.unknown += unknown
            known = np.concatenate([self.known, new])
            order = np.argsort(known)
            self.known, self.sizes = known[order], np.concatenate([self.sizes, sizes])[order]
        at = np.searchsorted(self.known, u)
        return self.sizes[at][inverse.ravel()]


class _Runs:
    """Distinct (start, end) runs with counts, summed as they come."""

    def __init__(self) -> None:
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def add(self, start: np.ndarray, end: np.ndarray, counts: np.ndarray | None = None) -> None:
        if not len(start):
            return
        if counts is None:
            (s, e), c = unique_rows(start, end)
        else:
            s, e, c = start, end, counts
        self.parts.append((s, e, c))
        if len(self.parts) >= _MERGE_EVERY:
            self.parts = [self.merged()]

    def merged(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self.parts:
            z = np.zeros(0, np.uint64)
            return z, z, z
        s = np.concatenate([p[0] for p in self.parts])
        e = np.concatenate([p[1] for p in self.parts])
        c = np.concatenate([p[2] for p in self.parts]).astype(np.uint64)
        order = np.lexsort((e, s))
        s, e, c = s[order], e[order], c[order]
        starts = np.flatnonzero(np.concatenate(([True], (s[1:] != s[:-1]) | (e[1:] != e[:-1]))))
        return s[starts], e[starts], np.add.reduceat(c, starts)


def compute_streamed(trace: Trace, source: Source, reader: CodeReader | None = None, *,
                     first_ips: dict[int, int] | None = None) -> Coverage:
    """The coverage of ``trace``'s threads, whose branches ``source(tid)`` yields (the
    trace's own arrays are not read: they may be empty)."""
    reader = reader or CodeReader(trace.symbolizer)
    module_indices = trace.symbolizer.module_indices
    lengths = _Lengths(reader)
    runs = _Runs()
    edge_parts: list[np.ndarray] = []
    total = 0
    ex = trace.exit
    for tid in trace.threads:
        prev_to: int | None = None          # the carried branch's target
        head = True                         # the next branch starts a run of its own
        first = True
        gap_at_start = False
        lost_at_end = False
        last_to = None
        for item in source(tid):
            if isinstance(item, Gap):
                if item.count > 0:
                    prev_to, head, lost_at_end = None, True, True
                    gap_at_start = gap_at_start or first
                continue
            arr = item
            if not len(arr):
                continue
            lost_at_end = False
            f, t, k = arr["from_ip"], arr["to_ip"], arr["kind"]
            interrupt = k == BranchKind.INTERRUPT
            insn_end = f + np.where(interrupt, np.uint64(0), lengths(f))
            start, end = t[:-1], insn_end[1:]
            if prev_to is not None:
                start = np.concatenate([np.array([prev_to], np.uint64), start])
                end = np.concatenate([insn_end[:1], end])
            keep = end != start
            runs.add(start[keep], end[keep])
            if head:
                h_start, h_keep = int(f[0]), not bool(interrupt[0])
                ip = (first_ips or {}).get(tid)
                if first and ip is not None and not gap_at_start:
                    h_start, h_keep = ip, True
                if h_keep and int(insn_end[0]) != h_start:
                    runs.add(np.array([h_start], np.uint64), insn_end[:1].copy())
            prev_to, head, first = int(t[-1]), False, False
            last_to = prev_to
            total += len(arr)
            edge_parts.append(summed(f, t, k, np.ones(len(arr), np.uint64)))
            if len(edge_parts) >= _MERGE_EVERY:
                edge_parts = [merge_edges(edge_parts)]
        if last_to is None or lost_at_end:
            continue
        tail_end: int | None = None
        if ex.status == "signaled" and ex.fault_pc is not None:
            if tid == (ex.tid if ex.tid is not None else trace.pid):
                tail_end = straight_line_end(reader, last_to, ex.fault_pc)
        elif ex.status == "exited":
            tail_end = straight_line_end(reader, last_to, None)
        if tail_end is not None and tail_end != last_to:
            runs.add(np.array([last_to], np.uint64), np.array([tail_end], np.uint64))
    ustart, uend, counts = runs.merged()
    sane = (uend > ustart) & (uend - ustart <= np.uint64(MAX_RUN))
    sane &= module_indices(ustart) == module_indices(uend - np.uint64(1))
    dropped = int(counts[~sane].sum())
    blocks = _split_blocks(ustart[sane], uend[sane], counts[sane])
    blocks["module"] = module_indices(blocks["start"])
    table = merge_edges(edge_parts) if edge_parts else summed(*(np.zeros(0, np.uint64),) * 4)
    edges = np.zeros(len(table), dtype=EDGE_DTYPE)
    edges["from_ip"], edges["to_ip"] = table["from_ip"], table["to_ip"]
    edges["kind"], edges["hits"] = table["kind"], table["count"]
    edges["from_module"] = module_indices(table["from_ip"])
    edges["to_module"] = module_indices(table["to_ip"])
    notes = []
    if dropped:
        notes.append(f"{dropped} straight-line run(s) left out: their ends do not fit "
                     "(records lost without a gap record)")
    if lengths.unknown:
        notes.append(f"{lengths.unknown} branch instruction(s) could not be read from disk; "
                     "their blocks end at the instruction's first byte")
    return Coverage(modules=tuple(trace.modules), blocks=blocks, edges=edges,
                    branches=total, runs=int(counts[sane].sum()), dropped_runs=dropped,
                    unknown_lengths=lengths.unknown, notes=tuple(notes))
