"""Count each distinct block-id pair of a sequence that comes piece by piece.

Statistics need how often each distinct branch was taken, not the branches: for a
block-id trace a branch is a pair of consecutive ids (``decode_blocks``), so counting
the pairs, then decoding only the distinct ones, gives every count at the speed of one
pass over the ids and in memory that grows with the distinct pairs, never with the
trace. Compiled with numba when it is installed (an open-addressing hash table, one
loop over the ids); numpy otherwise (``np.unique`` per piece, merged at the end: 5-10x
slower, same result).
"""

from __future__ import annotations


import numpy as np

from .hashing import EMPTY, Compiled, hash_insert

#: An edge table: one row per distinct branch (from_ip, to_ip, kind), with its count.
EDGE_COUNT_DTYPE = np.dtype([("from_ip", "<u8"), ("to_ip", "<u8"), ("kind", "u1"),
                             ("count", "<u8")])


def _count(ids, prev, keys, counts, used, shift):  # type: ignore[no-untyped-def]  # numba
    """Add the pairs (prev, ids[0]), (ids[0], ids[1]), ... to the table (at most half
    full: the caller makes room); ``shift`` is 64 - log2(len(keys)). The new ``used``."""
    mask = np.uint64(len(keys) - 1)
    for i in range(len(ids)):
        cur = np.uint64(ids[i])
        if prev >= 0:
            key = (np.uint64(prev) << np.uint64(32)) | cur
            h = (key * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(shift)
            while True:
                k = keys[h]
                if k == key:
                    counts[h] += 1
                    break
                if k == EMPTY:
                    keys[h] = key
                    counts[h] = 1
                    used += 1
                    break
                h = (h + np.uint64(1)) & mask
        prev = np.int64(cur)
    return used


_KERNELS = Compiled(_count, hash_insert)
_compiled = _KERNELS.get


class PairCounter:
    """Counts of the distinct pairs of consecutive ids of one thread, fed in order;
    :meth:`cut` where records are missing (no pair across it)."""

    def __init__(self, compiled: bool = True) -> None:
        self.prev = -1
        self.kernel = _compiled() if compiled else None
        self.shift = 64 - 12
        self.keys = np.full(1 << 12, EMPTY, np.uint64)
        self.counts = np.zeros(1 << 12, np.uint64)
        self.used = 0
        self.parts: list[tuple[np.ndarray, np.ndarray]] = []   # numpy path
        self.ids = 0

    def feed(self, ids: np.ndarray) -> None:
        if len(ids) == 0:
            return
        self.ids += len(ids)
        if self.kernel is not None:
            self._room(self.used + len(ids))
            self.used = int(self.kernel[0](ids, np.int64(self.prev), self.keys, self.counts,
                                           self.used, self.shift))
        else:
            seq = ids.astype(np.uint64)
            if self.prev >= 0:
                seq = np.concatenate([np.array([self.prev], np.uint64), seq])
            keys = (seq[:-1] << np.uint64(32)) | seq[1:]
            u, c = np.unique(keys, return_counts=True)
            self.parts.append((u, c.astype(np.uint64)))
            if len(self.parts) >= 64:
                self.parts = [self._merged()]
        self.prev = int(ids[-1])

    def cut(self) -> None:
        self.prev = -1

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(first ids, second ids, counts) of the distinct pairs, sorted by pair."""
        if self.kernel is not None:
            full = self.keys != EMPTY
            keys, counts = self.keys[full], self.counts[full]
            order = np.argsort(keys)
            keys, counts = keys[order], counts[order]
        else:
            keys, counts = self._merged() if self.parts else (np.zeros(0, np.uint64),
                                                              np.zeros(0, np.uint64))
        return ((keys >> np.uint64(32)).astype(np.uint32),
                (keys & np.uint64(0xFFFF_FFFF)).astype(np.uint32), counts)

    def _merged(self) -> tuple[np.ndarray, np.ndarray]:
        keys = np.concatenate([k for k, _ in self.parts])
        counts = np.concatenate([c for _, c in self.parts])
        u, inverse = np.unique(keys, return_inverse=True)
        return u, np.bincount(inverse, weights=counts, minlength=len(u)).astype(np.uint64)

    def _room(self, need: int) -> None:
        """Keep the table at most half full for ``need`` keys (rehash when growing)."""
        size = len(self.keys)
        if need * 2 <= size:
            return
        while need * 2 > size:
            size *= 2
        full = self.keys != EMPTY
        old_keys, old_counts = self.keys[full], self.counts[full]
        self.keys = np.full(size, EMPTY, np.uint64)
        self.counts = np.zeros(size, np.uint64)
        self.shift = 64 - (size.bit_length() - 1)
        assert self.kernel is not None          # the numpy path keeps no table
        self.kernel[1](old_keys, old_counts, self.keys, self.counts, self.shift)


def summed(from_ip: np.ndarray, to_ip: np.ndarray, kind: np.ndarray,
           counts: np.ndarray) -> np.ndarray:
    """Rows with equal (from, to, kind) summed, sorted."""
    if len(from_ip) == 0:
        return np.zeros(0, EDGE_COUNT_DTYPE)
    order = np.lexsort((kind, to_ip, from_ip))
    f, t, k, n = from_ip[order], to_ip[order], kind[order], counts[order]
    new = np.concatenate(([True], (f[1:] != f[:-1]) | (t[1:] != t[:-1]) | (k[1:] != k[:-1])))
    starts = np.flatnonzero(new)
    out = np.zeros(len(starts), EDGE_COUNT_DTYPE)
    out["from_ip"], out["to_ip"], out["kind"] = f[starts], t[starts], k[starts]
    out["count"] = np.add.reduceat(n.astype(np.uint64), starts)
    return out


def merge_edges(parts: list[np.ndarray]) -> np.ndarray:
    rows = np.concatenate(parts)
    return summed(rows["from_ip"], rows["to_ip"], rows["kind"], rows["count"])


def edges_of(branches: np.ndarray) -> np.ndarray:
    """The edge table of a branch array in memory (what :func:`count_thread` gives for
    a thread of a file)."""
    return summed(branches["from_ip"], branches["to_ip"], branches["kind"],
                  np.ones(len(branches), np.uint64))
