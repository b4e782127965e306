"""A trace file's branches piece by piece, in memory bounded by one chunk.

:func:`~.load.open_trace` decodes every branch of every thread into memory (17 bytes a
branch): a reader that only counts, or that wants the first or last few branches, needs
none of that. :func:`pieces` yields a thread's branches in order, one decoded chunk at a
time (a chunk holds at most :data:`~.format.MAX_CHUNK_BYTES` of records; writers aim
for :data:`~.format.CHUNK_BYTES`), with what is missing as :class:`~branchtrace.model.Gap`
values in between. Block ids are paired across chunk edges (the branch between two
chunks is in the later piece), never across a hole.

Joined, the pieces of a thread are the branches :func:`~.load.open_trace` gives it, and
the gaps are its gaps (a test checks both on recorded and damaged files). Two things
differ by design: a chunk that does not decompress is found when its turn comes (its gap
has the reason ``"corrupt chunk"`` as there), and branches of a kind no
:class:`~branchtrace.model.BranchKind` names become OTHER without a note (``strange``
counts them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import zstandard

from .. import progress
from ..decode import Carry, decode
from ..model import BRANCH_DTYPE, BranchKind, Gap
from ..store import RECORD_DTYPES, Encoding
from .chunkbody import open_records, read_full
from .holes import Hole, Shifter, select
from .reader import Chunk, TraceFile

CORRUPT = "corrupt chunk"


@dataclass(frozen=True, slots=True)
class Piece:
    """Consecutive branches of one thread."""

    tid: int
    index: int              # of the first branch, in the thread's branches
    branches: np.ndarray    # BRANCH_DTYPE, oldest first
    first_ns: int           # when the chunk they came from was drained: first and last
    last_ns: int            # record's times (0: not known)


def thread_order(tf: TraceFile) -> list[int]:
    """The threads of the file in order of appearance (as :func:`open_trace` lists them)."""
    return list(dict.fromkeys([t.tid for t in tf.threads] + list(tf.chunks)))


class ThreadStream:
    """The pieces and gaps of one thread; iterate once. ``strange`` counts branches of
    kinds no :class:`BranchKind` names (shown as OTHER)."""

    def __init__(self, tf: TraceFile, tid: int, from_chunk: int = 0) -> None:
        """``from_chunk``: start at that chunk of the thread (in order) instead of the
        first, for a reader that wants only the last branches: the branch from the
        chunk before (when nothing is missing between them) is the first branch, as
        it would be when read from the start; the file's gaps are left out (their
        place among the branches is not known) and ``n`` counts from there."""
        self.tf, self.tid = tf, tid
        kept = next((t.kept for t in tf.threads if t.tid == tid), None)
        self.chunks, self.holes = select(tf.chunks.get(tid, []), kept)
        shift = Shifter(self.holes)
        self.file_gaps = sorted(((shift(g.index), g.count, g.reason) for g in tf.gaps
                                 if g.tid == tid), key=lambda g: g[0])
        self.strange = 0
        self.n = 0
        self._dctx = zstandard.ZstdDecompressor()
        self._carry = Carry(tf.blocks) if tf.encoding == Encoding.BLOCKID \
            and tf.blocks is not None else None
        self._pending: Hole | None = None      # holes touching each other become one gap
        if from_chunk > 0:
            self._start_at(min(from_chunk, len(self.chunks)))

    def _start_at(self, k: int) -> None:
        before, self.chunks = self.chunks[k - 1], self.chunks[k:]
        self.file_gaps = []
        self.holes = [h for h in self.holes if h.start >= before.head.first_index + before.head.count]
        if self._carry is None or not self.chunks \
                or self.chunks[0].head.first_index != before.head.first_index + before.head.count:
            return
        raw = read_chunk(self._dctx, before, RECORD_DTYPES[self.tf.encoding])
        if raw is not None and len(raw):
            self._carry.last = int(raw[-1])

    @property
    def chunk_count(self) -> int:
        """The thread's chunks still to read."""
        return len(self.chunks)

    def __iter__(self) -> Iterator[Piece | Gap]:
        h = 0
        for c in self.chunks:
            while h < len(self.holes) and self.holes[h].start <= c.head.first_index:
                yield from self._hole(self.holes[h])
                h += 1
            branches = self._chunk(c)
            if branches is None:
                yield from self._hole(Hole(c.head.first_index, c.head.count))
                continue
            yield from self._flush()
            yield from self._emit(branches, c.head.first_ns, c.head.last_ns)
        for hole in self.holes[h:]:
            yield from self._hole(hole)
        yield from self._flush()
        for at, count, reason in self.file_gaps:        # past the last branch
            yield Gap(self.tid, min(at, self.n), count, reason)
        self.file_gaps = []

    def _hole(self, hole: Hole) -> Iterator[Gap]:
        if self._carry is not None:
            self._carry.cut()
        p = self._pending
        if p is not None and p.start + p.count == hole.start:
            self._pending = Hole(p.start, p.count + hole.count)
            return
        yield from self._flush()
        self._pending = hole

    def _flush(self) -> Iterator[Gap]:
        if self._pending is not None:
            yield Gap(self.tid, self.n, self._pending.count, CORRUPT)
            self._pending = None

    def _emit(self, branches: np.ndarray, first_ns: int, last_ns: int) -> Iterator[Piece | Gap]:
        """The branches as pieces, split where a gap of the file's lies among them."""
        at = 0
        while self.file_gaps and self.file_gaps[0][0] < self.n + len(branches) - at:
            index, count, reason = self.file_gaps.pop(0)
            cut = max(index - self.n, 0)
            if cut:
                yield Piece(self.tid, self.n, branches[at:at + cut], first_ns, last_ns)
                self.n += cut
                at += cut
            yield Gap(self.tid, self.n, count, reason)
        if at < len(branches):
            yield Piece(self.tid, self.n, branches[at:], first_ns, last_ns)
            self.n += len(branches) - at

    def _chunk(self, c: Chunk) -> np.ndarray | None:
        """The chunk's branches; None when it does not decompress to its size."""
        raw = read_chunk(self._dctx, c, RECORD_DTYPES[self.tf.encoding])
        if raw is None:
            return None
        if self._carry is not None:
            out = self._carry.feed(raw)
        else:
            try:
                out = decode(self.tf.encoding, raw, self.tf.blocks)
            except (ValueError, IndexError, TypeError):
                return None
        bad = out["kind"] > max(BranchKind)
        if bad.any():
            out = out.copy() if not out.flags.writeable else out
            self.strange += int(np.count_nonzero(bad))
            out["kind"][bad] = BranchKind.OTHER
        return out


def read_chunk(dctx: zstandard.ZstdDecompressor, c: Chunk, dtype: np.dtype
               ) -> np.ndarray | None:
    """The raw records of a chunk; None when it does not decompress to the size its
    head declares (at most MAX_CHUNK_BYTES, checked by the scan)."""
    progress.advance(c.size)
    size = c.head.count * dtype.itemsize
    buf = np.empty(size, np.uint8)              # (a bytearray would be zeroed first)
    view = buf.data
    try:
        with open_records(dctx, c.body, c.narrow) as reader:
            if not read_full(reader, view):
                return None
    except zstandard.ZstdError:
        return None
    return buf.view(dtype)


def pieces(tf: TraceFile, tid: int | None = None) -> Iterator[Piece | Gap]:
    """The branches of thread ``tid`` (every thread, one after the other, when None) as
    :class:`Piece` values, oldest first, with :class:`Gap` values where records are
    missing."""
    for t in ([tid] if tid is not None else thread_order(tf)):
        yield from ThreadStream(tf, t)


def joined(stream: Iterator[Piece | Gap]) -> np.ndarray:
    """The branches of a stream of pieces, in one array (for tests and small traces)."""
    parts = [p.branches for p in stream if isinstance(p, Piece)]
    return np.concatenate(parts) if parts else np.zeros(0, BRANCH_DTYPE)


@dataclass(frozen=True, slots=True)
class IdPiece:
    """The raw block ids of one chunk of a thread (BLOCKID encoding), undecoded."""

    ids: np.ndarray         # uint32
    after_hole: bool        # records are missing right before it: its first id pairs
                            # with nothing, and the thread has a gap there
    first_ns: int
    last_ns: int
    missing: int = 0        # after a hole: how many records are missing


class IdStream:
    """The block ids of one thread chunk by chunk, for readers that decode them
    themselves (analysis/contexts.py); iterate once. ``gaps``: the branch indices of the
    file's gaps (lost records), which lie among the branches of the pieces; a chunk that
    does not decompress is a hole like a missing one (the next piece is ``after_hole``).
    ``holes`` counts them."""

    def __init__(self, tf: TraceFile, tid: int) -> None:
        self.tf, self.tid = tf, tid
        kept = next((t.kept for t in tf.threads if t.tid == tid), None)
        self.chunks, holes = select(tf.chunks.get(tid, []), kept)
        self.hole_starts = [h.start for h in holes]
        self.hole_counts = [h.count for h in holes]
        shift = Shifter(holes)
        self.gap_values = sorted((Gap(tid, shift(g.index), g.count, g.reason)
                                  for g in tf.gaps if g.tid == tid), key=lambda g: g.index)
        self.gaps = [g.index for g in self.gap_values]
        self.corrupt = 0

    def __iter__(self) -> Iterator[IdPiece]:
        dctx = zstandard.ZstdDecompressor()
        dtype = RECORD_DTYPES[self.tf.encoding]
        h, after, missing = 0, False, 0
        for c in self.chunks:
            while h < len(self.hole_starts) and self.hole_starts[h] <= c.head.first_index:
                after = True
                missing += self.hole_counts[h]
                h += 1
            raw = read_chunk(dctx, c, dtype)
            if raw is None:
                self.corrupt += 1
                after = True
                missing += c.head.count
                continue
            yield IdPiece(raw, after, c.head.first_ns, c.head.last_ns, missing)
            after, missing = False, 0


def id_source(tf: TraceFile) -> Callable[[int], tuple[IdStream, list[int]]] | None:
    """Per thread, its :class:`IdStream` and the branch indices of its gaps; None when
    the file holds no block ids (from/to records: decode them)."""
    if tf.encoding != Encoding.BLOCKID or tf.blocks is None \
            or RECORD_DTYPES[Encoding.BLOCKID] != np.dtype(np.uint32):
        return None

    def thread(tid: int) -> tuple[IdStream, list[int]]:
        stream = IdStream(tf, tid)
        return stream, stream.gaps

    return thread
