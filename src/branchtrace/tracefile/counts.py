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

from dataclasses import dataclass

import numpy as np
import zstandard

from ..decode import taken_pairs
from ..decode.pairs import EDGE_COUNT_DTYPE, PairCounter, edges_of, merge_edges, summed
from ..model import BranchKind
from ..store import RECORD_DTYPES, Encoding
from .holes import select
from .reader import TraceFile
from .stream import read_chunk

__all__ = ["EDGE_COUNT_DTYPE", "ThreadCounts", "count_thread", "edges_of"]

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
