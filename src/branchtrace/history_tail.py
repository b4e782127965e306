"""``history --last N`` from the end of the file: where each thread is read from.

Lines are numbered from the thread's start (as GDB numbers them), so the reader must
know how many segments (or instructions) come before the ones it shows, and for the
call history the stack there. Both are counted without decoding branches: the segments
and the stack by the compiled walk over the block ids (analysis/segwalk.py), the
instructions from the counted runs (decode/run_counter.py: each distinct run decoded
once). The branches are then decoded from the last chunks only. A thread with gaps, a
file of from/to records, or no numba: read forward as before (same output, slower).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import chain

import numpy as np

from .analysis import CodeReader, FunctionIndex
from .analysis.callstream import CallStream
from .analysis.code import MAX_RUN_BYTES
from .analysis.contexts import BlockFunctions
from .analysis.segwalk import NotHere, segment_walk
from .decode.run_counter import MAX_ROWS
from .model import Gap
from .reporters.history_stream import InsnResumer, Resume, Resumer
from .tracefile.counts import count_runs
from .tracefile.reader import TraceFile
from .tracefile.stream import IdStream, Piece, ThreadStream, id_source

_USER_LIMIT = 1 << 47


def call_resumer(tf: TraceFile, last: int) -> Resumer | None:
    """Where each thread's ``last`` segments may be read from (``stream_calls``)."""
    if id_source(tf) is None or tf.blocks is None or len(tf.blocks) >= MAX_ROWS:
        return None
    blocks = tf.blocks
    tables: dict[int, BlockFunctions] = {}

    def resume(tid: int, functions: FunctionIndex, reader: CodeReader,
               insns: bool) -> Resume | None:
        ids = IdStream(tf, tid)
        if ids.gaps or ids.hole_starts:
            return None
        table = tables.get(id(functions))
        if table is None:
            table = tables[id(functions)] = BlockFunctions(blocks, functions, reader)
        try:
            sw = segment_walk(table, ids, last)
        except NotHere:
            return None
        snap = sw.choice()
        if ids.corrupt or snap is None:
            return None
        stream = ThreadStream(tf, tid, from_chunk=snap.chunk - 1)
        got = _skip(stream, snap.branches - snap.before)
        if got is None:
            return None
        before, parts = got
        instructions = 0
        if insns:
            counted = _instructions_before(tf, tid, snap.chunk, reader)
            if counted is None or counted[0] != snap.branches or counted[2] != before:
                return None
            instructions = counted[1]
        no_sig = (1 << 64) - 1
        stack = [(int(f), int(lo), int(hi), -1 if int(s) == no_sig else int(s))
                 for f, lo, hi, s in zip(snap.stack_func, snap.stack_lo, snap.stack_hi,
                                         snap.stack_sig)]
        calls = CallStream.resumed(
            functions, reader, branches=snap.branches, segments=snap.segments,
            lowest=snap.lowest, open_first=snap.open_first, before=(snap.function, before),
            stack=stack, base=snap.base)
        return Resume(calls, parts, instructions, before)

    return resume


def insn_resumer(tf: TraceFile, last: int) -> InsnResumer | None:
    """Where each thread's last ``last`` instructions may be read from (``stream_insns``):
    the latest chunk from which at least ``last`` branches follow (each ends a run of at
    least one instruction), found going back twice as many chunks each time."""
    if id_source(tf) is None or tf.blocks is None or len(tf.blocks) >= MAX_ROWS:
        return None

    def resume(tid: int, reader: CodeReader) -> tuple[Iterable[np.ndarray | Gap], int, int] | None:
        ids = IdStream(tf, tid)
        if ids.gaps or ids.hole_starts:
            return None
        total = ThreadStream(tf, tid).chunk_count
        step = 1
        while True:
            start = max(0, total - step)
            if start == 0:
                return None
            tail = ThreadStream(tf, tid, from_chunk=start)
            if any(isinstance(p, Gap) for p in tail):
                return None
            if tail.n > last:
                break
            step *= 2
        counted = _instructions_before(tf, tid, start, reader)
        if counted is None:
            return None
        stream = ThreadStream(tf, tid, from_chunk=start)
        return ((p.branches if isinstance(p, Piece) else p for p in stream),
                counted[1], counted[2])

    return resume


def _skip(stream: ThreadStream, skip: int
          ) -> tuple[int, Iterable[np.ndarray | Gap]] | None:
    """The target of the ``skip``-th branch of ``stream`` and its branches after it;
    None if it has a gap or fewer branches."""
    it: Iterator[Piece | Gap] = iter(stream)
    before = None
    for part in it:
        if isinstance(part, Gap):
            return None
        b = part.branches
        if skip > len(b):
            skip -= len(b)
            before = int(b["to_ip"][-1]) if len(b) else before
            continue
        before = int(b["to_ip"][skip - 1]) if skip else before
        if before is None:
            return None
        rest = b[skip:]

        def branches() -> Iterator[np.ndarray | Gap]:
            if len(rest):
                yield rest
            for p in it:
                yield p.branches if isinstance(p, Piece) else p

        return before, branches()
    return None


def _instructions_before(tf: TraceFile, tid: int, chunks: int, reader: CodeReader
                         ) -> tuple[int, int, int] | None:
    """(branches, instructions of their runs, the last one's target) of the thread's
    first ``chunks`` chunks (the thread has no gap), counted from their block ids in two
    stretches at once (tracefile/counts.py): the instruction numbers of
    history's runs (analysis/runs.py's rules: a run from a branch's target to the next
    branch's source is decoded from the binary; a run that cannot be, or the first,
    counts its last instruction alone)."""
    counts = count_runs(tf, tid, chunks_before=chunks)
    if counts.last_to is None:
        return None
    return counts.branches, run_instructions(counts.runs, reader), counts.last_to


def run_instructions(runs: np.ndarray, reader: CodeReader) -> int:
    """The instructions of counted runs (RUN_COUNT_DTYPE rows), as Runs counts them."""
    if not len(runs):
        return 0
    s, e = runs["start"], runs["last"]
    keys = np.unique(np.stack([s, e], axis=1), axis=0)
    sizes: dict[tuple[int, int], int] = {}
    singles: dict[int, int] = {}

    def single(address: int) -> int:
        got = singles.get(address)
        if got is None:
            found = reader.decode_run(address, address, reader.modules_of(
                np.array([address], np.uint64))[0])
            got = singles[address] = len(found) if found is not None else 1
        return got

    ks, ke = keys[:, 0], keys[:, 1]
    valid = (ke >= ks) & ((ke - ks) < MAX_RUN_BYTES) & (ks < _USER_LIMIT)
    modules = reader.modules_of(ks)
    for a, z, ok, m in zip(ks.tolist(), ke.tolist(), valid.tolist(), modules):
        found = reader.decode_run(a, z, m) if ok else None
        sizes[(a, z)] = len(found) if found is not None else single(z)
    total = 0
    for a, z, c in zip(s.tolist(), e.tolist(), runs["count"].tolist()):
        total += sizes[(a, z)] * c
    return total
