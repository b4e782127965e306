"""Function tables: which function holds an address, answered for whole arrays at once.

A :class:`FunctionTable` is built once from the function symbols of one ELF file and
turns them into a partition of the address space: sorted segment starts, each owned by
one symbol (or by none). A lookup is then one ``np.searchsorted`` over the segment
starts, whatever the number of addresses.

The rules, in order:

* A *sized* function symbol (``STT_FUNC``/``STT_GNU_IFUNC`` with a size) covers
  ``[start, start + size)``. Where sized symbols overlap, the innermost wins: the one
  that starts last, then the one that ends first.
* Aliases (the same range under several names) keep one name: fewer leading
  underscores first (``printf`` over ``_IO_printf``), then global over weak over
  local binding, then the shorter name, then alphabetical order.
* A *fallback* symbol (a zero-size function or an untyped label in an executable
  section) covers only gaps between sized symbols: from its address up to the next
  symbol of any kind, the end of its section, or its own size if it has one. One
  that lies inside a sized symbol is never shown (its name still works in
  :meth:`FunctionTable.address_of`).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

BINDING_GLOBAL = 0
BINDING_WEAK = 1
BINDING_LOCAL = 2


@dataclass(frozen=True, slots=True)
class RawSymbol:
    """A function symbol as read from a symbol table, before the table is built."""

    name: str
    start: int
    size: int
    sized: bool     # a typed function with a size: covers [start, start + size)
    limit: int      # end of the section that holds it: no symbol extends past it
    binding: int = BINDING_GLOBAL

    @property
    def covers_range(self) -> bool:
        """A sized function: it owns ``[start, start + size)`` outright."""
        return self.sized and self.size > 0

    def preference(self) -> tuple[int, int, int, str]:
        """Sort key among aliases: the smallest key gives the name that is shown."""
        underscores = len(self.name) - len(self.name.lstrip("_"))
        return (underscores, self.binding, len(self.name), self.name)


def _best_per_key(symbols: list[RawSymbol], key_of: str) -> list[RawSymbol]:
    """Keep one symbol per range (sized) or per address (fallback), the preferred one."""
    best: dict[tuple[int, int], RawSymbol] = {}
    for sym in symbols:
        key = (sym.start, sym.start + sym.size if key_of == "range" else sym.start)
        kept = best.get(key)
        if kept is None or sym.preference() < kept.preference():
            best[key] = sym
    return [best[k] for k in sorted(best)]


def _partition(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Elementary segments of possibly overlapping intervals, each owned by the innermost.

    Returns ``(segment_starts, owners)``: segment ``k`` spans
    ``[segment_starts[k], segment_starts[k + 1])``; the last start is the end of the
    last interval and owns nothing. ``owners`` holds interval indices or -1.
    """
    if len(starts) == 0:
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
    if len(starts) == 1 or bool(np.all(ends[:-1] <= starts[1:])):
        # The usual case: sorted and disjoint, so gaps are the only extra segments.
        # Touching intervals leave an empty gap segment; lookups use side="right", so
        # the later of two equal bounds (the next interval's start) wins.
        bounds = np.empty(2 * len(starts), dtype=np.uint64)
        bounds[0::2] = starts
        bounds[1::2] = ends
        owners = np.full(2 * len(starts), -1, dtype=np.int64)
        owners[0::2] = np.arange(len(starts))
        return bounds, owners
    bounds = np.unique(np.concatenate([starts, ends]))
    owners = np.full(len(bounds), -1, dtype=np.int64)
    order = np.lexsort((ends, starts))
    heap: list[tuple[int, int, int]] = []
    nxt = 0
    start_list = starts.tolist()
    end_list = ends.tolist()
    order_list = order.tolist()
    for k, b in enumerate(bounds.tolist()):
        while nxt < len(order_list) and start_list[order_list[nxt]] <= b:
            i = order_list[nxt]
            heapq.heappush(heap, (-start_list[i], end_list[i], i))
            nxt += 1
        while heap and heap[0][1] <= b:
            heapq.heappop(heap)
        if heap:
            owners[k] = heap[0][2]
    return bounds, owners


def _owner_at(seg_starts: np.ndarray, owners: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The owner of the segment holding each point (-1 outside every segment)."""
    if len(seg_starts) == 0:
        return np.full(len(points), -1, dtype=np.int64)
    k = np.searchsorted(seg_starts, points, side="right").astype(np.int64) - 1
    found = owners[np.maximum(k, 0)]
    return np.where(k >= 0, found, -1)


class FunctionTable:
    """Address -> function lookups over one file's function symbols (file addresses)."""

    def __init__(self, symbols: Iterable[RawSymbol]) -> None:
        all_symbols = [s for s in symbols if s.name]
        self._by_name: dict[str, int] = {}
        for sym in sorted(all_symbols, key=lambda s: (not s.sized, s.binding)):
            self._by_name.setdefault(sym.name, sym.start)
            if not sym.name.endswith("@plt"):      # "puts" is puts, not its PLT stub
                self._by_name.setdefault(sym.name.split("@", 1)[0], sym.start)

        sized = _best_per_key([s for s in all_symbols if s.covers_range], "range")
        s_starts = np.array([s.start for s in sized], dtype=np.uint64)
        s_ends = np.array([s.start + s.size for s in sized], dtype=np.uint64)
        s_bounds, s_owners = _partition(s_starts, s_ends)
        # Fallback symbols inside a sized function are never shown: drop them.
        loose = [s for s in all_symbols if not s.covers_range]
        covered = _owner_at(s_bounds, s_owners, np.array([s.start for s in loose],
                                                         dtype=np.uint64))
        fallback = _best_per_key([s for s, c in zip(loose, covered.tolist()) if c < 0],
                                 "address")
        chosen = sized + fallback
        #: The names of the kept symbols; lookups return indices into this list.
        self.names: list[str] = [s.name for s in chosen]
        self._sym_start = np.array([s.start for s in chosen], dtype=np.uint64)

        n_sized = len(sized)

        # Fallback symbols end at the next symbol of any kind, their section end, or
        # their own size, whichever comes first.
        f_starts = self._sym_start[n_sized:]
        all_starts = np.unique(self._sym_start)
        nxt = np.searchsorted(all_starts, f_starts, side="right")
        next_start = np.where(
            nxt < len(all_starts),
            all_starts[np.minimum(nxt, max(len(all_starts) - 1, 0))],
            np.uint64(np.iinfo(np.uint64).max),
        ).astype(np.uint64)
        limits = np.array([s.limit for s in fallback], dtype=np.uint64)
        own = np.array(
            [s.start + s.size if s.size > 0 else s.limit for s in fallback], dtype=np.uint64
        )
        f_ends = np.minimum(np.minimum(next_start, limits), own)
        valid = f_ends > f_starts
        f_idx = np.flatnonzero(valid) + n_sized
        f_bounds, f_local = _partition(f_starts[valid], f_ends[valid])
        f_owners = np.full(len(f_local), -1, dtype=np.int64)
        f_owners[f_local >= 0] = f_idx[f_local[f_local >= 0]]

        bounds = np.unique(np.concatenate([s_bounds, f_bounds]))
        owner = _owner_at(s_bounds, s_owners, bounds)
        owner = np.where(owner >= 0, owner, _owner_at(f_bounds, f_owners, bounds))
        if len(bounds):
            owner[-1] = -1   # the last bound is an end: nothing lies past it
        change = np.ones(len(owner), dtype=bool)
        change[1:] = owner[1:] != owner[:-1]
        self._seg_start = bounds[change]
        self._seg_owner = owner[change].astype(np.int32)

    def __len__(self) -> int:
        return len(self.names)

    def lookup(self, vaddrs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Function of each file address: ``(name index or -1, offset from its start)``.

        Both results have the shape of ``vaddrs``; the offset is 0 where the function
        is unknown.
        """
        v = np.asarray(vaddrs, dtype=np.uint64)
        if len(self._seg_start) == 0:
            return np.full(v.shape, -1, dtype=np.int32), np.zeros(v.shape, dtype=np.uint64)
        k = np.searchsorted(self._seg_start, v, side="right").astype(np.int64) - 1
        owner = np.where(k >= 0, self._seg_owner[np.maximum(k, 0)], np.int32(-1))
        owner = owner.astype(np.int32)
        known = owner >= 0
        start = self._sym_start[np.maximum(owner, 0)] if len(self._sym_start) else v
        offset = np.where(known, v - start, np.uint64(0)).astype(np.uint64)
        return owner, offset

    def address_of(self, name: str) -> int | None:
        """The file address of the function or label called ``name`` (any alias)."""
        return self._by_name.get(name)
