"""How often each distinct branch was taken, per thread, in one pass over a trace file.

Statistics (branches by kind, the hottest functions and edges) are functions of the
*edge table*: each distinct (from_ip, to_ip, kind) with its count. This module makes it
without decoding the trace into memory: block-id chunks are decompressed one at a time
and their consecutive id pairs counted (decode/pairs.py); only the distinct pairs are
decoded at the end. From/to chunks (ptrace) are counted with ``np.unique`` per chunk.
Memory grows with the distinct edges, never with the branches.

The counts are those of the branches :func:`~.load.open_trace` gives (the same pairing
across chunk edges, none across a missing or corrupt chunk): a test checks it on
recorded files.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import zstandard

from ..decode import taken_pairs
from ..decode.pairs import EDGE_COUNT_DTYPE, PairCounter, edges_of, merge_edges, summed
from ..decode.run_counter import MAX_ROWS, RunCounter, combine
from ..decode.runs import PieceTally, RunCounts
from ..model import BranchKind
from ..store import RECORD_DTYPES, Encoding
from .holes import Shifter, select
from .reader import Chunk, TraceFile
from .stream import Piece, ThreadStream, read_chunk

__all__ = ["EDGE_COUNT_DTYPE", "ThreadCounts", "count_runs", "count_thread", "edges_of"]

#: Threads with at least this many ids are counted in stretches at once (tests lower it).
PARALLEL_MIN_IDS = 1 << 23
_WORKERS = min(2, os.cpu_count() or 1)

@dataclass(frozen=True, slots=True)
class ThreadCounts:
    tid: int
    branches: int            # taken branches (the sum of the counts)
    edges: np.ndarray        # EDGE_COUNT_DTYPE, sorted by (from_ip, to_ip, kind)
    corrupt: int             # chunks that did not decompress (their records are missing)


def count_thread(tf: TraceFile, tid: int, compiled: bool = True) -> ThreadCounts:
    """The edge table of thread ``tid`` of ``tf``."""
    kept = next((t.kept for t in tf.threads if t.tid == tid), None)
    chunks, holes = select(tf.chunks.get(tid, []), kept)
    dctx = zstandard.ZstdDecompressor()
    dtype = RECORD_DTYPES[tf.encoding]
    blockid = tf.encoding == Encoding.BLOCKID and tf.blocks is not None
    pairs = PairCounter(compiled) if blockid else None
    parts: list[np.ndarray] = []
    corrupt = 0
    h = 0
    for c in chunks:
        if h < len(holes) and holes[h].start <= c.head.first_index:
            while h < len(holes) and holes[h].start <= c.head.first_index:
                h += 1
            if pairs is not None:
                pairs.cut()
        raw = read_chunk(dctx, c, dtype)
        if raw is None:
            corrupt += 1
            if pairs is not None:
                pairs.cut()
            continue
        if pairs is not None:
            pairs.feed(raw)
        elif tf.encoding == Encoding.FROMTO:
            parts.append(summed(raw["from_ip"], raw["to_ip"], raw["kind"],
                                 np.ones(len(raw), np.uint64)))
            if len(parts) >= 64:
                parts = [merge_edges(parts)]
    if pairs is not None:
        assert tf.blocks is not None
        edges = _decode_pairs(*pairs.result(), tf.blocks)
    else:
        edges = merge_edges(parts) if parts else np.zeros(0, EDGE_COUNT_DTYPE)
    bad = edges["kind"] > max(BranchKind)
    if bad.any():                                 # as open_trace shows them: OTHER
        edges["kind"][bad] = BranchKind.OTHER
        edges = merge_edges([edges])
    return ThreadCounts(tid, int(edges["count"].sum()), edges, corrupt)


def _decode_pairs(first: np.ndarray, second: np.ndarray, counts: np.ndarray,
                  blocks: np.ndarray) -> np.ndarray:
    """The distinct id pairs that are taken branches, as edges with their counts."""
    index, branches = taken_pairs(first, second, blocks)
    return summed(branches["from_ip"], branches["to_ip"], branches["kind"], counts[index])


def count_runs(tf: TraceFile, tid: int, compiled: bool = True,
               workers: int = _WORKERS, chunks_before: int | None = None) -> RunCounts:
    """The runs and edges of thread ``tid`` of ``tf`` (decode/runs.py), for coverage:
    block ids counted chunk by chunk, only the distinct runs and pairs decoded; from/to
    chunks through :class:`~.stream.ThreadStream`. The gaps are those the stream gives
    (holes, corrupt chunks, the file's gaps). A long thread without gaps of the file is
    counted in ``workers`` stretches at once (numba and zstd let go of the GIL).
    ``chunks_before``: only the thread's first chunks (block ids only: for history's
    instruction numbers after them)."""
    if chunks_before is not None:
        assert tf.encoding == Encoding.BLOCKID and tf.blocks is not None
    elif tf.encoding != Encoding.BLOCKID or tf.blocks is None or len(tf.blocks) >= MAX_ROWS:
        tally = PieceTally()
        for item in ThreadStream(tf, tid):
            if isinstance(item, Piece):
                tally.piece(item.branches)
            else:
                tally.gap(item.count)
        return tally.result()
    blocks = tf.blocks
    kept = next((t.kept for t in tf.threads if t.tid == tid), None)
    chunks, holes = select(tf.chunks.get(tid, []), kept)
    shift = Shifter(holes)
    heads = [shift(g.index) for g in tf.gaps if g.tid == tid and g.count > 0]
    if chunks_before is not None:
        chunks = chunks[:chunks_before]
        end = chunks[-1].head.first_index + chunks[-1].head.count if chunks else 0
        holes = [h for h in holes if h.start < end]
    ends = [c.head.first_index + c.head.count for c in chunks]
    follows = [c.head.first_index == (ends[k - 1] if k else 0) for k, c in enumerate(chunks)]
    dtype = RECORD_DTYPES[tf.encoding]
    first = RunCounter(blocks, heads, compiled)
    total = sum(c.head.count for c in chunks)
    if heads or first.kernel is None or total < PARALLEL_MIN_IDS or workers < 2:
        bounds = [0, len(chunks)]
    else:        # stretches of about as many ids, each after a chunk that holds some
        at = np.searchsorted(np.cumsum([c.head.count for c in chunks]),
                             np.arange(1, workers) * total // workers)
        bounds = sorted({0, *(int(k) + 1 for k in at
                              if k + 1 < len(chunks) and chunks[k].head.count), len(chunks)})
    counters = [first] + [_stretch(tf, blocks, chunks[lo - 1], follows[lo], compiled)
                          for lo in bounds[1:-1]]
    if chunks and not follows[0]:
        first.cut()

    def count(j: int) -> None:
        dctx = zstandard.ZstdDecompressor()
        for k in range(bounds[j], bounds[j + 1]):
            if k > bounds[j] and not follows[k]:
                counters[j].cut()
            raw = read_chunk(dctx, chunks[k], dtype)
            if raw is None:
                counters[j].cut()
            else:
                counters[j].feed(raw)

    if len(counters) == 1:
        count(0)
    else:
        with ThreadPoolExecutor(max_workers=len(counters)) as pool:
            list(pool.map(count, range(len(counters))))
    if chunks and holes and holes[-1].start >= ends[-1] or not chunks and holes:
        counters[-1].cut()                        # records missing after the last chunk
    return combine(counters)


def _stretch(tf: TraceFile, blocks: np.ndarray, before: Chunk, follows: bool,
             compiled: bool) -> RunCounter:
    """The counter of the stretch that starts after chunk ``before``."""
    raw = read_chunk(zstandard.ZstdDecompressor(), before, RECORD_DTYPES[tf.encoding]) \
        if follows else None
    if raw is not None:
        return RunCounter(blocks, (), compiled, after=int(raw[-1]))
    counter = RunCounter(blocks, (), compiled)
    counter.cut()                                 # a hole, or a corrupt chunk, before it
    return counter
