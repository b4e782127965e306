"""Which of a thread's records a trace file holds: its chunks in order, and the holes
between them (records missing from the file, or in chunks that do not decompress),
placed among the decoded branches as gaps."""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from .reader import Chunk


@dataclass(slots=True)
class Hole:
    start: int        # writer index (records of the thread before it)
    count: int


class Shifter:
    """Where a writer index lands once the records of ``holes`` (in order, not
    overlapping) are gone: a binary search, so many gaps and holes stay cheap."""

    def __init__(self, holes: list[Hole]) -> None:
        self.holes = sorted(holes, key=lambda h: h.start)
        self.starts = [h.start for h in self.holes]
        self.before = [0]                     # records in holes[:k]
        for h in self.holes:
            self.before.append(self.before[-1] + h.count)
        self.total = self.before[-1]

    def __call__(self, index: int) -> int:
        k = bisect.bisect_right(self.starts, index)
        if k == 0:
            return index
        last = self.holes[k - 1]
        return index - self.before[k - 1] - min(last.count, index - last.start)


def select(chunks: list[Chunk], kept: int | None) -> tuple[list[Chunk], list[Hole]]:
    """The chunks in order, without overlaps, and the holes between them (and at the end,
    when the THREAD record says more were written)."""
    out: list[Chunk] = []
    holes: list[Hole] = []
    pos = 0
    for c in sorted(chunks, key=lambda c: c.head.first_index):
        if c.head.first_index < pos:
            continue                       # a duplicate or overlapping chunk
        if c.head.first_index > pos:
            holes.append(Hole(pos, c.head.first_index - pos))
        out.append(c)
        pos = c.head.first_index + c.head.count
    if kept is not None and kept > pos:
        holes.append(Hole(pos, kept - pos))
    return out, holes


def items_of(chunks: list[Chunk], holes: list[Hole], ok: list[bool]) -> list[int | Hole]:
    """The thread in order: good chunks (their index), and holes (missing or bad chunks)."""
    items: list[int | Hole] = []
    h = 0
    for k, c in enumerate(chunks):
        while h < len(holes) and holes[h].start <= c.head.first_index:
            items.append(holes[h])
            h += 1
        items.append(k if ok[k] else Hole(c.head.first_index, c.head.count))
    items.extend(holes[h:])
    return items


def add_gap(gaps: list[tuple[Hole, int]], hole: Hole, n: int) -> None:
    """Note ``hole`` at branch ``n``, merged with the previous one when they touch."""
    if gaps and gaps[-1][1] == n and gaps[-1][0].start + gaps[-1][0].count == hole.start:
        gaps[-1] = (Hole(gaps[-1][0].start, gaps[-1][0].count + hole.count), n)
    else:
        gaps.append((hole, n))
