"""The straight-line runs of one thread: the instructions between its branches.

Run ``k`` (``0 <= k < n``) ends with branch ``k``'s source instruction and starts at the
target of branch ``k - 1``. Where the start is not known (run 0, and the first run after
a gap) the run holds just that source instruction. Run ``n``, the tail, is what the
thread ran after its last branch (see :meth:`CodeReader.decode_tail`); a thread whose
trace ends in a gap has no tail.

Runs repeat heavily (a loop body, a function's prologue), so each distinct run is
decoded once; everything per run is then a numpy gather. Instructions are numbered
from 1 over the whole thread, as GDB numbers them.
"""

from __future__ import annotations

import numpy as np

from ..trace import Trace
from .code import MAX_RUN_BYTES, CodeReader, Instruction

_SHIFT = 17                      # run length bits in a packed (start, length) key
_MASK = (1 << _SHIFT) - 1
assert MAX_RUN_BYTES <= 1 << _SHIFT
_USER_LIMIT = 1 << 47            # user-space addresses fit in 47 bits on x86-64
UNREADABLE = "(code not readable)"


class Runs:
    """The runs of thread ``tid`` of ``trace``; decoded on first use."""

    def __init__(self, trace: Trace, tid: int, reader: CodeReader | None = None) -> None:
        b = trace.branches(tid)
        gap_at = sorted({g.index for g in trace.gaps if g.tid == tid and 0 <= g.index <= len(b)})
        self._setup(trace, tid, reader, b, None, gap_at, True, 0, None)

    @classmethod
    def window(cls, trace: Trace, tid: int, branches: np.ndarray, *, before: int | None,
               gap_at: list[int], tail: bool, base: int, reader: CodeReader,
               cache: dict[int, list[Instruction] | None]) -> Runs:
        """The runs that end with ``branches``, a window of the thread's (and the tail
        after them when ``tail``): ``before``, the target of the branch before them
        (None at the start of the thread); ``gap_at``, the gaps' places among them
        (0 .. len); ``base``, the instructions of the thread before them. Run ``k`` here
        is run ``k + offset`` of the thread; ``cache`` keeps decoded runs from one window
        to the next (it grows with the distinct runs)."""
        runs = cls.__new__(cls)
        runs._setup(trace, tid, reader, branches, before, gap_at, tail, base, cache)
        return runs

    def _setup(self, trace: Trace, tid: int, reader: CodeReader | None, b: np.ndarray,
               before: int | None, gap_at: list[int], tail: bool, base: int,
               cache: dict[int, list[Instruction] | None] | None) -> None:
        self.trace = trace
        self.tid = tid
        self.reader = reader if reader is not None else CodeReader(trace.symbolizer)
        n = self.n = len(b)
        self.base = base
        self._cache = cache
        self.start = np.zeros(n + 1, dtype=np.uint64)
        self.end = np.zeros(n + 1, dtype=np.uint64)
        self.known_start = np.ones(n + 1, dtype=bool)
        if n:
            self.start[0] = b["from_ip"][0] if before is None else before
            self.start[1:n] = b["to_ip"][:-1]
            self.end[:n] = b["from_ip"]
            self.start[n] = b["to_ip"][-1]
            self.known_start[0] = before is not None
            inner = [g for g in gap_at if (0 if before is None else -1) < g < n]
            self.known_start[inner] = False
            self.start[inner] = self.end[inner]
        self.has_tail = tail and n > 0 and n not in gap_at
        ex = trace.exit
        crashed = ex.tid if ex.tid is not None else trace.pid
        self.stop = ex.fault_pc if ex.fault_pc is not None and crashed == tid else None
        self._shape: np.ndarray | None = None
        self._insns: list[list[Instruction]] = []
        self._counts: np.ndarray | None = None
        self._first: np.ndarray | None = None
        self._lines: tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]] | None = None

    # -- decoding, once per distinct run ----------------------------------------------

    def _decode(self) -> np.ndarray:
        if self._shape is not None:
            return self._shape
        n, reader, insns = self.n, self.reader, self._insns
        shape = np.full(n + 1, -1, dtype=np.int64)
        if n:
            s, e = self.start[:n], self.end[:n]
            diff = e - s                                   # wraps when e < s: invalid
            valid = self.known_start[:n] & (e >= s) & (diff < MAX_RUN_BYTES) & (s < _USER_LIMIT)
            vidx = np.flatnonzero(valid)
            packed = (s[vidx] << np.uint64(_SHIFT)) | diff[vidx]
            unique, inverse = np.unique(packed, return_inverse=True)
            ushape = np.full(len(unique), -1, dtype=np.int64)
            modules = reader.modules_of(unique >> np.uint64(_SHIFT))
            cache = self._cache
            for i, (key, m) in enumerate(zip(unique.tolist(), modules)):
                start = key >> _SHIFT
                if cache is None:
                    found = reader.decode_run(start, start + (key & _MASK), m)
                elif key in cache:
                    found = cache[key]
                else:
                    found = cache[key] = reader.decode_run(start, start + (key & _MASK), m)
                if found is not None:
                    ushape[i] = len(insns)
                    insns.append(found)
            shape[vidx] = ushape[inverse]
            singles = np.flatnonzero(shape[:n] < 0)   # unknown start, or unreadable
            ends, inverse = np.unique(e[singles], return_inverse=True)
            base = len(insns)
            for address, m in zip(ends.tolist(), reader.modules_of(ends)):
                one = reader.decode_run(address, address, m)
                insns.append(one if one is not None else [Instruction(address, 0, UNREADABLE)])
            shape[singles] = base + inverse
        if self.has_tail:
            tail = reader.decode_tail(int(self.start[n]), self.stop)
            if tail:
                shape[n] = len(insns)
                insns.append(tail)
        self._shape = shape
        return shape

    @property
    def counts(self) -> np.ndarray:
        """Instructions in each run (int64, ``n + 1``)."""
        if self._counts is None:
            shape = self._decode()
            sizes = np.array([len(x) for x in self._insns] + [0], dtype=np.int64)
            self._counts = sizes[shape]            # shape -1 picks the trailing 0
        return self._counts

    @property
    def first_number(self) -> np.ndarray:
        """The number of each run's first instruction (from 1)."""
        if self._first is None:
            c = self.counts
            first = np.full(len(c), self.base + 1, dtype=np.int64)
            np.cumsum(c[:-1], out=first[1:])
            first[1:] += self.base + 1
            self._first = first
        return self._first

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def instructions(self, run: int) -> list[Instruction]:
        """The instructions of one run, in order (``len == counts[run]``)."""
        k = int(self._decode()[run])
        return self._insns[k] if k >= 0 else []

    # -- source lines ------------------------------------------------------------------

    def lines(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
        """Per run: (file index or -1, lowest line, highest line, file names).

        A run's file is that of its first instruction with a line; the range covers
        the run's instructions in that file (as GDB's /l counts only the lines of the
        function's own source file).
        """
        if self._lines is not None:
            return self._lines
        shape = self._decode()
        m = len(self._insns)
        sizes = np.array([len(x) for x in self._insns], dtype=np.int64)
        addresses = np.fromiter((i.address for run in self._insns for i in run),
                                dtype=np.uint64, count=int(sizes.sum()))
        res = self.trace.symbolizer.resolve(addresses)
        f = np.where(res.line > 0, res.file, -1).astype(np.int64)
        offsets = np.zeros(m, dtype=np.int64)
        if m > 1:
            np.cumsum(sizes[:-1], out=offsets[1:])
        sfile = np.full(m + 1, -1, dtype=np.int32)
        slo = np.zeros(m + 1, dtype=np.int32)
        shi = np.zeros(m + 1, dtype=np.int32)
        if len(addresses):
            # first instruction with a line, per shape
            has = f >= 0
            idx = np.where(has, np.arange(len(f)), len(f))
            firstline = np.minimum.reduceat(idx, offsets)
            ok = firstline < len(f)
            shape_file = np.where(ok, f[np.minimum(firstline, len(f) - 1)], -1)
            own = f == np.repeat(shape_file, sizes)
            big = np.iinfo(np.int32).max
            lo = np.minimum.reduceat(np.where(own & has, res.line, big), offsets)
            hi = np.maximum.reduceat(np.where(own & has, res.line, 0), offsets)
            sfile[:m] = shape_file
            slo[:m] = np.where(shape_file >= 0, lo, 0)
            shi[:m] = np.where(shape_file >= 0, hi, 0)
        self._lines = (sfile[shape], slo[shape], shi[shape], res.file_names)
        return self._lines
