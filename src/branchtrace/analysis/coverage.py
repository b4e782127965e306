"""Executed basic blocks and taken edges, with hit counts, from the branches of a trace.

Between two recorded branches a thread runs straight-line code: the target of branch
``i`` starts a *run* that ends with the source instruction of branch ``i + 1``
(inclusive), so each run is ``[to_ip[i], from_ip[i+1] + length of that instruction)``.
Not-taken conditional jumps and system calls that return to their fall-through are not
branches, so they lie inside runs. Runs of different entries overlap (a jump into the
middle of code that other runs also cover); cutting every run at every run start and
end gives non-overlapping basic blocks, each with the number of times it ran.

What a branch trace cannot show, and how it is handled:

* The code before a thread's first recorded branch is unknown unless the caller knows
  where recording began (``first_ips``): only the first branch's own instruction is
  counted.
* After a thread's last branch it ran straight on to where it ended. When the program
  exited, that tail is counted up to the first system call (the one that ended the
  thread, or an earlier one that returned; either way that code ran), passing over
  conditional jumps (a taken one would have been recorded); when the program died of a
  fault in that thread, up to the faulting instruction (not included: it did not
  complete). Otherwise the tail is left out.
* A signal delivery (``INTERRUPT``) starts at the instruction that was interrupted,
  before it ran: the run that ends there excludes it.
* Where records were lost (a gap) the run across the gap is unknown and left out; the
  instruction of the first branch after the gap is counted.
* A run whose end lies before its start, or in another module, or further than
  :data:`MAX_RUN` bytes away, cannot be straight-line code: records were lost without a
  gap record. It is left out and counted in :attr:`Coverage.dropped_runs`.

Instruction lengths come from the binaries on disk, decoded once per distinct address
(capstone); everything else is numpy over whole arrays, never a Python loop per branch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..isa import NOT_A_BRANCH, classify
from ..model import BranchKind, ModuleMap
from .code import MAX_INSN, CodeReader

if TYPE_CHECKING:
    from ..trace import Trace

#: Executed blocks ``[start, end)`` (run-time addresses), sorted and non-overlapping.
#: ``module`` indexes :attr:`Coverage.modules` (-1: in no module).
BLOCK_DTYPE = np.dtype([("start", "<u8"), ("end", "<u8"), ("hits", "<u8"), ("module", "<i4")])

#: Taken edges: one row per distinct (from_ip, to_ip, kind), with how often it was taken.
EDGE_DTYPE = np.dtype([("from_ip", "<u8"), ("to_ip", "<u8"), ("kind", "u1"), ("hits", "<u8"),
                       ("from_module", "<i4"), ("to_module", "<i4")])

#: Longest straight-line run believed (bytes); longer ones mean lost records.
MAX_RUN = 1 << 20
#: How far the tail after a thread's last branch is decoded (instructions).
MAX_TAIL = 4096


@dataclass(frozen=True, eq=False)
class Coverage:
    """What ran: basic blocks and taken edges with hit counts, over every thread."""

    modules: tuple[ModuleMap, ...]
    blocks: np.ndarray          # BLOCK_DTYPE, sorted by start
    edges: np.ndarray           # EDGE_DTYPE, sorted by (from_ip, to_ip, kind)
    branches: int               # recorded branches read
    runs: int                   # straight-line runs counted (with repeats)
    dropped_runs: int           # runs left out as impossible (lost records); see above
    unknown_lengths: int        # branch instructions whose length could not be read
    notes: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.blocks)

    def module_blocks(self, module: int) -> np.ndarray:
        """The blocks of module ``module`` (an index into :attr:`modules`; -1: none)."""
        selected: np.ndarray = self.blocks[self.blocks["module"] == module]
        return selected

    @property
    def unmapped_blocks(self) -> int:
        """Blocks in no module (JIT code, or code unmapped before the maps were read)."""
        return int(np.count_nonzero(self.blocks["module"] < 0))

    def executed_bytes(self) -> int:
        return int(np.sum(self.blocks["end"] - self.blocks["start"], dtype=np.uint64))


def instruction_lengths(reader: CodeReader, addresses: np.ndarray) -> tuple[np.ndarray, int]:
    """Instruction length at each of the (distinct) addresses, and how many are unknown.

    An unknown length counts as 1 byte, so the instruction's first byte is covered.
    """
    a = np.asarray(addresses, dtype=np.uint64)
    out = np.ones(len(a), dtype=np.uint64)
    unknown = 0
    for i, (address, module) in enumerate(zip(a.tolist(), reader.modules_of(a))):
        code = reader.read(address, MAX_INSN, module)
        insn = classify(code, address) if code else None
        if insn is None:
            unknown += 1
        else:
            out[i] = insn.size
    return out, unknown


def straight_line_end(reader: CodeReader, start: int, stop_at: int | None) -> int | None:
    """End of the code a thread ran from ``start`` after its last branch, or None.

    With ``stop_at`` (where a fault hit) the run ends just before it; without, it ends
    after the first system call. Conditional jumps are passed over (a taken one would
    have been recorded); any other control transfer, or code that cannot be read,
    means the tail is unknown (None).
    """
    module = reader.modules_of(np.array([start], dtype=np.uint64))[0]
    address = start
    for _ in range(MAX_TAIL):
        if address == stop_at:
            return address
        code = reader.read(address, MAX_INSN, module)
        insn = classify(code, address) if code else None
        if insn is None:
            return None
        if insn.kind == BranchKind.SYSCALL and stop_at is None:
            return insn.fallthrough
        if insn.kind not in (NOT_A_BRANCH, BranchKind.COND, BranchKind.SYSCALL):
            return None
        address = insn.fallthrough
    return None


def unique_rows(*columns: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Distinct rows of parallel columns (sorted by the first column, then the next...)
    and how often each occurs."""
    n = len(columns[0])
    if n == 0:
        return [c[:0] for c in columns], np.zeros(0, dtype=np.uint64)
    order = np.lexsort(tuple(reversed(columns)))
    sorted_cols = [c[order] for c in columns]
    new = np.zeros(n, dtype=bool)
    new[0] = True
    for c in sorted_cols:
        new[1:] |= c[1:] != c[:-1]
    first = np.flatnonzero(new)
    counts = np.diff(np.append(first, n)).astype(np.uint64)
    return [c[first] for c in sorted_cols], counts


def _thread_runs(branches: np.ndarray, lengths: np.ndarray, gap_indices: list[int],
                 first_ip: int | None,
                 tail_end: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The runs of one thread: ``(start, end, candidate)``; candidate False means left out
    on principle (gaps, empty runs), True means still to be checked."""
    f = branches["from_ip"]
    t = branches["to_ip"]
    k = branches["kind"]
    interrupt = k == BranchKind.INTERRUPT
    insn_end = f + np.where(interrupt, np.uint64(0), lengths)   # end of each from insn
    starts = [t[:-1]]
    ends = [insn_end[1:]]
    keep = [np.ones(max(len(f) - 1, 0), dtype=bool)]
    # The first branch's instruction (and the first after each gap) ran, nothing known
    # before it.
    heads = np.array(sorted({0, *(i for i in gap_indices if 0 < i < len(f))}), dtype=np.int64)
    head_start = f[heads]
    head_keep = ~interrupt[heads]
    if first_ip is not None and 0 not in gap_indices:   # where recording began: known
        head_start[0] = first_ip
        head_keep[0] = True
    starts.append(head_start)
    ends.append(insn_end[heads])
    keep.append(head_keep)
    for i in gap_indices:
        if 0 < i < len(f):
            keep[0][i - 1] = False
    if tail_end is not None:
        starts.append(t[-1:])
        ends.append(np.array([tail_end], dtype=np.uint64))
        keep.append(np.ones(1, dtype=bool))
    start = np.concatenate(starts)
    end = np.concatenate(ends)
    candidate = np.concatenate(keep) & (end != start)
    return start, end, candidate


def compute(trace: Trace, reader: CodeReader | None = None, *,
            first_ips: dict[int, int] | None = None) -> Coverage:
    """The coverage of ``trace``: executed blocks and taken edges with hit counts.

    ``first_ips`` maps a thread to the address its recording began at, when known (the
    start point of ``--start``): its code up to the first branch is then counted too.
    """
    reader = reader or CodeReader(trace.symbolizer)
    module_indices = trace.symbolizer.module_indices
    arrays = list(trace.threads.values())
    all_from = (np.concatenate([a["from_ip"] for a in arrays]) if arrays
                else np.zeros(0, dtype=np.uint64))
    distinct, inverse = np.unique(all_from, return_inverse=True)
    distinct_len, unknown = instruction_lengths(reader, distinct)
    lengths = distinct_len[inverse.ravel()]

    run_start: list[np.ndarray] = []
    run_end: list[np.ndarray] = []
    run_ok: list[np.ndarray] = []
    offset = 0
    ex = trace.exit
    for tid, arr in trace.threads.items():
        n = len(arr)
        if n == 0:
            continue
        gap_indices = [g.index for g in trace.gaps if g.tid == tid and g.count > 0]
        tail_end: int | None = None
        last_to = int(arr["to_ip"][-1])
        lost_at_end = any(i >= n for i in gap_indices)
        if ex.status == "signaled" and ex.fault_pc is not None and not lost_at_end:
            if tid == (ex.tid if ex.tid is not None else trace.pid):
                tail_end = straight_line_end(reader, last_to, ex.fault_pc)
        elif ex.status == "exited" and not lost_at_end:
            tail_end = straight_line_end(reader, last_to, None)
        s, e, ok = _thread_runs(arr, lengths[offset:offset + n], gap_indices,
                                (first_ips or {}).get(tid), tail_end)
        run_start.append(s)
        run_end.append(e)
        run_ok.append(ok)
        offset += n

    start = np.concatenate(run_start) if run_start else np.zeros(0, dtype=np.uint64)
    end = np.concatenate(run_end) if run_end else np.zeros(0, dtype=np.uint64)
    ok = np.concatenate(run_ok) if run_ok else np.zeros(0, dtype=bool)
    start, end = start[ok], end[ok]
    (ustart, uend), counts = unique_rows(start, end)
    sane = (uend > ustart) & (uend - ustart <= np.uint64(MAX_RUN))
    sane &= module_indices(ustart) == module_indices(uend - np.uint64(1))
    dropped = int(counts[~sane].sum())
    blocks = _split_blocks(ustart[sane], uend[sane], counts[sane])
    blocks["module"] = module_indices(blocks["start"])
    edges = _edges(arrays, module_indices)
    notes = coverage_notes(dropped, unknown)
    return Coverage(modules=tuple(trace.modules), blocks=blocks, edges=edges,
                    branches=len(all_from), runs=int(counts[sane].sum()),
                    dropped_runs=dropped, unknown_lengths=unknown, notes=tuple(notes))


def _split_blocks(start: np.ndarray, end: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Cut runs (with repeat counts) at every run start and end: executed basic blocks."""
    bounds = np.unique(np.concatenate([start, end]))
    if len(bounds) < 2:
        return np.zeros(0, dtype=BLOCK_DTYPE)
    lo = np.searchsorted(bounds, start)
    hi = np.searchsorted(bounds, end)
    delta = np.zeros(len(bounds) + 1, dtype=np.int64)
    np.add.at(delta, lo, counts.astype(np.int64))
    np.add.at(delta, hi, -counts.astype(np.int64))
    hits = np.cumsum(delta)[:len(bounds) - 1]
    ran = np.flatnonzero(hits > 0)
    out = np.zeros(len(ran), dtype=BLOCK_DTYPE)
    out["start"] = bounds[ran]
    out["end"] = bounds[ran + 1]
    out["hits"] = hits[ran].astype(np.uint64)
    return out


def _edges(arrays: list[np.ndarray],
           module_indices: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    if not arrays:
        return np.zeros(0, dtype=EDGE_DTYPE)
    b = np.concatenate(arrays)
    (f, t, k), counts = unique_rows(b["from_ip"], b["to_ip"], b["kind"])
    out = np.zeros(len(f), dtype=EDGE_DTYPE)
    out["from_ip"], out["to_ip"], out["kind"], out["hits"] = f, t, k, counts
    out["from_module"] = module_indices(f)
    out["to_module"] = module_indices(t)
    return out


def coverage_notes(dropped: int, unknown: int) -> list[str]:
    """What a coverage leaves out, in words: runs whose ends do not fit, branch
    instructions that could not be read (shared with analysis/coverage_counts.py)."""
    notes = []
    if dropped:
        notes.append(f"{dropped} straight-line run(s) left out: their ends do not fit "
                     "(records lost without a gap record)")
    if unknown:
        notes.append(f"{unknown} branch instruction(s) could not be read from disk; "
                     "their blocks end at the instruction's first byte")
    return notes
