"""Straight-line runs and taken edges of a thread, counted without its branches.

Coverage (analysis/coverage.py) needs, besides the edge table, the *runs*: a run goes
from a branch's target to the end of the next branch's instruction. For a block-id
thread a branch is a taken pair of consecutive ids (``decode_blocks``), so the run
between two branches starts at the block the first one entered (its ``start``) and ends
at the last instruction of the block the second one leaves. A run is therefore the key
(entry id, exit id, whether the next block is a signal handler's: an INTERRUPT, which
excludes the interrupted instruction); pair counts alone would not do (which exit a run
through fall-through blocks reaches depends on where it was entered). One compiled pass
over the ids counts each distinct run key and taken pair (decode/run_counter.py); only
the distinct keys are decoded into addresses at the end: memory grows with the distinct
blocks, never with the branches.

What every thread gives, whatever its encoding, is a :class:`RunCounts`: runs as rows
(start, last, interrupt, count), where a *head* (the first branch, and the first after
each gap: its own instruction ran, nothing before is known) is the run
``(from_ip, from_ip)``; the edges; and what the first and the last branch need (a
known start point, the tail). :class:`PieceTally` makes it from decoded branches (from/to
files, tests); :class:`~.run_counter.RunCounter` from block ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..model import BranchKind
from .pairs import EDGE_COUNT_DTYPE, merge_edges, summed

#: Runs: one row per distinct (start, last, interrupt): the run covers ``[start, end of
#: the instruction at last)``, or ``[start, last)`` when the branch at ``last`` is an
#: INTERRUPT (the instruction did not run). The same layout as EDGE_COUNT_DTYPE.
RUN_COUNT_DTYPE = np.dtype([("start", "<u8"), ("last", "<u8"), ("interrupt", "u1"),
                            ("count", "<u8")])
assert RUN_COUNT_DTYPE.itemsize == EDGE_COUNT_DTYPE.itemsize


@dataclass(frozen=True, slots=True)
class RunCounts:
    """What the coverage of one thread needs, counted."""

    branches: int
    runs: np.ndarray             # RUN_COUNT_DTYPE, heads included
    edges: np.ndarray            # EDGE_COUNT_DTYPE
    first_from: int | None       # the first branch's source (None: no branch)
    first_interrupt: bool
    gap_at_start: bool           # records were lost before the first branch
    last_to: int | None          # the last branch's target
    lost_at_end: bool            # records were lost after the last branch


def runs_summed(start: np.ndarray, last: np.ndarray, interrupt: np.ndarray,
                counts: np.ndarray) -> np.ndarray:
    """Rows with equal (start, last, interrupt) summed, sorted."""
    return summed(start, last, interrupt, counts).view(RUN_COUNT_DTYPE)


def merge_runs(parts: list[np.ndarray]) -> np.ndarray:
    return merge_edges([p.view(EDGE_COUNT_DTYPE) for p in parts]).view(RUN_COUNT_DTYPE)


class PieceTally:
    """RunCounts from a thread's decoded branches, fed piece by piece with the gaps
    (a gap of ``count`` > 0 breaks the run across it and makes the next branch a head)."""

    def __init__(self) -> None:
        self.runs: list[np.ndarray] = []
        self.edges: list[np.ndarray] = []
        self.branches = 0
        self.prev_to: int | None = None
        self.last_to: int | None = None
        self.head = True
        self.gap_at_start = self.lost_at_end = False
        self.first: tuple[int, bool] | None = None

    def gap(self, count: int) -> None:
        if count > 0:
            self.prev_to, self.head, self.lost_at_end = None, True, True
            self.gap_at_start = self.gap_at_start or self.first is None

    def piece(self, arr: np.ndarray) -> None:
        if not len(arr):
            return
        f, t = arr["from_ip"], arr["to_ip"]
        intr = (arr["kind"] == BranchKind.INTERRUPT).astype(np.uint8)
        start, last, bit = [t[:-1]], [f[1:]], [intr[1:]]
        if self.prev_to is not None:
            start.append(np.array([self.prev_to], np.uint64))
            last.append(f[:1])
            bit.append(intr[:1])
        if self.head:
            start.append(f[:1])
            last.append(f[:1])
            bit.append(intr[:1])
        if self.first is None:
            self.first = (int(f[0]), bool(intr[0]))
        s, la = np.concatenate(start), np.concatenate(last)
        self.runs.append(runs_summed(s, la, np.concatenate(bit), np.ones(len(s), np.uint64)))
        self.edges.append(summed(f, t, arr["kind"], np.ones(len(arr), np.uint64)))
        if len(self.runs) >= 64:
            self.runs, self.edges = [merge_runs(self.runs)], [merge_edges(self.edges)]
        self.prev_to, self.head, self.lost_at_end = int(t[-1]), False, False
        self.last_to = self.prev_to
        self.branches += len(arr)

    def result(self) -> RunCounts:
        runs = merge_runs(self.runs) if self.runs else np.zeros(0, RUN_COUNT_DTYPE)
        edges = merge_edges(self.edges) if self.edges else np.zeros(0, EDGE_COUNT_DTYPE)
        first = self.first
        return RunCounts(self.branches, runs, edges, None if first is None else first[0],
                         first is not None and first[1], self.gap_at_start, self.last_to,
                         self.lost_at_end)
