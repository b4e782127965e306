"""Coverage from counted runs and edges (decode/runs.py), never from the branches.

:func:`~.coverage.compute`'s rules, applied to what each thread's :class:`RunCounts`
holds: the distinct runs (start, last instruction, whether that was an INTERRUPT) with
how often each ran, heads included; the distinct edges with their counts; the first
branch (where a known start point replaces its head) and the last branch's target (where
the tail is followed from). Instruction lengths are decoded once per distinct branch
source. The runs are cut into blocks and checked exactly as there, so the result is the
one ``compute`` gives for the same branches (tests/unit/test_coverage_counts.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from ..decode.pairs import EDGE_COUNT_DTYPE, merge_edges
from ..decode.runs import RUN_COUNT_DTYPE, RunCounts, merge_runs, runs_summed
from .code import CodeReader
from .coverage import (
    EDGE_DTYPE,
    MAX_RUN,
    Coverage,
    _split_blocks,
    coverage_notes,
    instruction_lengths,
    straight_line_end,
)

if TYPE_CHECKING:
    from ..trace import Trace

#: The counts of one thread of the trace (by tid).
Counts = Callable[[int], RunCounts]


def compute_counted(trace: Trace, counts: Counts, reader: CodeReader | None = None, *,
                    first_ips: dict[int, int] | None = None) -> Coverage:
    """The coverage of ``trace``'s threads, each counted by ``counts(tid)`` (the trace's
    own arrays are not read: they may be empty)."""
    reader = reader or CodeReader(trace.symbolizer)
    module_indices = trace.symbolizer.module_indices
    run_parts: list[np.ndarray] = []
    edge_parts: list[np.ndarray] = []
    total = 0
    ex = trace.exit
    for tid in trace.threads:
        rc = counts(tid)
        if not rc.branches:
            continue
        total += rc.branches
        edge_parts.append(rc.edges)
        runs = rc.runs
        ip = (first_ips or {}).get(tid)
        if ip is not None and not rc.gap_at_start and rc.first_from is not None:
            runs = _moved_head(runs, rc.first_from, rc.first_interrupt, ip)
        run_parts.append(runs)
        if rc.lost_at_end or rc.last_to is None:
            continue
        tail_end: int | None = None
        if ex.status == "signaled" and ex.fault_pc is not None:
            if tid == (ex.tid if ex.tid is not None else trace.pid):
                tail_end = straight_line_end(reader, rc.last_to, ex.fault_pc)
        elif ex.status == "exited":
            tail_end = straight_line_end(reader, rc.last_to, None)
        if tail_end is not None:
            # the row of a run that ends at ``tail_end`` (an INTERRUPT's run ends at
            # its ``last``, not past it)
            run_parts.append(runs_summed(np.array([rc.last_to], np.uint64),
                                         np.array([tail_end], np.uint64),
                                         np.ones(1, np.uint8), np.ones(1, np.uint64)))
    edge_table = merge_edges(edge_parts) if edge_parts else np.zeros(0, EDGE_COUNT_DTYPE)
    sources = np.unique(edge_table["from_ip"])
    sizes, unknown = instruction_lengths(reader, sources)
    runs = merge_runs(run_parts) if run_parts else np.zeros(0, RUN_COUNT_DTYPE)
    start, end, hits = _ends(runs, sources, sizes)
    sane = (end > start) & (end - start <= np.uint64(MAX_RUN))
    sane &= module_indices(start) == module_indices(end - np.uint64(1))
    dropped = int(hits[~sane].sum())
    blocks = _split_blocks(start[sane], end[sane], hits[sane])
    blocks["module"] = module_indices(blocks["start"])
    edges = np.zeros(len(edge_table), dtype=EDGE_DTYPE)
    edges["from_ip"], edges["to_ip"] = edge_table["from_ip"], edge_table["to_ip"]
    edges["kind"], edges["hits"] = edge_table["kind"], edge_table["count"]
    edges["from_module"] = module_indices(edge_table["from_ip"])
    edges["to_module"] = module_indices(edge_table["to_ip"])
    notes = coverage_notes(dropped, unknown)
    return Coverage(modules=tuple(trace.modules), blocks=blocks, edges=edges,
                    branches=total, runs=int(hits[sane].sum()), dropped_runs=dropped,
                    unknown_lengths=unknown, notes=tuple(notes))


def _moved_head(runs: np.ndarray, first_from: int, interrupt: bool, ip: int) -> np.ndarray:
    """``runs`` with the first branch's head starting at ``ip`` (where recording began)."""
    runs = runs.copy()
    at = np.flatnonzero((runs["start"] == first_from) & (runs["last"] == first_from)
                        & (runs["interrupt"] == interrupt))
    runs["count"][at[0]] -= 1
    moved = runs_summed(np.array([ip], np.uint64), np.array([first_from], np.uint64),
                        np.array([interrupt], np.uint8), np.ones(1, np.uint64))
    return merge_runs([runs[runs["count"] > 0], moved])


def _ends(runs: np.ndarray, sources: np.ndarray, sizes: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct non-empty runs ``(start, end)`` and how often each ran. A run's end
    is the end of its last instruction (its start, for an INTERRUPT there)."""
    last = runs["last"]
    at = np.minimum(np.searchsorted(sources, last), max(len(sources) - 1, 0))
    known = (sources[at] == last) if len(sources) else np.zeros(len(last), bool)
    size = np.where(known, sizes[at] if len(sizes) else 0, 0).astype(np.uint64)
    end = last + np.where(runs["interrupt"] != 0, np.uint64(0), size)
    start, hits = runs["start"], runs["count"]
    keep = end != start
    start, end, hits = start[keep], end[keep], hits[keep]
    if not len(start):
        return start, end, hits
    order = np.lexsort((end, start))
    start, end, hits = start[order], end[order], hits[order]
    first = np.flatnonzero(np.concatenate(([True], (start[1:] != start[:-1])
                                           | (end[1:] != end[:-1]))))
    return start[first], end[first], np.add.reduceat(hits, first)
