"""Raw store encodings -> canonical branch arrays (:data:`~branchtrace.model.BRANCH_DTYPE`).

Vectorized: numpy does the work, never a Python loop per record.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import jit
from ..store.blocks import FLAG_ASYNC, FLAG_FOREIGN, FLAG_HOOKED, FLAG_VALID, HOOK_RESUME_SPAN
from ..errors import TraceFormatError
from ..model import BRANCH_DTYPE, BranchKind
from ..store import RECORD_DTYPES, Encoding

#: Id sequences at least this long use the compiled decoder (decode/jit.py) when numba is
#: installed: below, numpy is fast enough and compiling would cost more than it saves.
JIT_MIN_IDS = 1 << 22
_CHUNK = 1 << 20  # block ids decoded at a time (small enough for malloc to reuse its memory)


def decode(encoding: Encoding, records: np.ndarray, blocks: np.ndarray | None = None,
           pool: ThreadPoolExecutor | None = None) -> np.ndarray:
    """Decode one thread's raw records (oldest first) into canonical branches.

    ``blocks`` is the block table the BLOCKID encoding refers to; ``pool``, if given,
    runs the parts of a long sequence in parallel."""
    if encoding == Encoding.FROMTO:
        if records.dtype != RECORD_DTYPES[Encoding.FROMTO]:
            records = records.view(RECORD_DTYPES[Encoding.FROMTO])
        out = np.empty(len(records), dtype=BRANCH_DTYPE)
        out["from_ip"] = records["from_ip"]
        out["to_ip"] = records["to_ip"]
        out["kind"] = records["kind"]
        return out
    if encoding == Encoding.BLOCKID:
        if blocks is None:
            raise TraceFormatError("cannot decode block ids without a block table")
        return decode_blocks(records, blocks, pool)
    raise TraceFormatError(f"cannot decode records of encoding {int(encoding)}")


def decode_blocks(ids: np.ndarray, blocks: np.ndarray,
                  pool: ThreadPoolExecutor | None = None) -> np.ndarray:
    """Taken branches from a thread's sequence of executed block ids (oldest first).

    Consecutive blocks ``prev -> cur`` were joined by a taken branch exactly when
    ``cur.start != prev.end`` (the block did not fall through into the next one); the
    branch goes from ``prev.last`` to ``cur.start`` and its kind is that of ``prev``'s
    last instruction. A block whose last instruction is no branch (Stalker split it,
    say) and that did not fall through keeps its kind, OTHER: control left it without
    a branch instruction (the thread was redirected, or records were lost in between).
    Ids that the table does not know (never completed, or past its end) break the
    chain: no branch is made into or out of them. Transitions between two blocks that
    are both outside the ``--only`` modules are not reported. A block that begins with
    a hook of the tracer's (FLAG_HOOKED) goes on a few bytes further on, or enters the
    hook once more (the hook's code calls the function), once the hook has run: that
    is no branch of the program's either. A signal handler's block
    (FLAG_ASYNC) is entered by an INTERRUPT from wherever the thread was.

    Long sequences are cut into spans of ``_CHUNK`` ids (overlapping by one), decoded
    in two parallel passes on ``pool`` (numpy releases the GIL; a pool of our own when
    none is given): the first finds where each span's taken branches are, the second
    writes them straight into their place in the one result array.
    """
    ids = np.asarray(ids)
    if len(ids) < 2:
        return np.zeros(0, dtype=BRANCH_DTYPE)
    table = _Table(blocks)
    if len(ids) >= JIT_MIN_IDS and ids.dtype == np.uint32 and jit.available():
        parts = min(4, os.cpu_count() or 1)
        cols = table.columns()
        if pool is None:
            with ThreadPoolExecutor(max_workers=parts) as own:
                return jit.decode(ids, *cols, own, parts)
        return jit.decode(ids, *cols, pool, parts)
    spans = [(lo, min(lo + _CHUNK, len(ids) - 1)) for lo in range(0, len(ids) - 1, _CHUNK)]
    if len(spans) == 1:
        return table.fill(ids, table.taken(ids), None)
    if pool is None:
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as own:
            return _two_passes(table, ids, spans, own)
    return _two_passes(table, ids, spans, pool)


class Carry:
    """Decodes one thread's block ids piece by piece, in order: the last id of a piece
    pairs with the first id of the next (the branch between two chunks), so the pieces'
    branches, joined, are :func:`decode_blocks` of the joined ids. :meth:`cut` forgets
    the last id (records are missing there: no branch is made across a hole)."""

    def __init__(self, blocks: np.ndarray) -> None:
        self.table = _Table(blocks)
        self.last: int | None = None

    def feed(self, ids: np.ndarray) -> np.ndarray:
        if len(ids) == 0:
            return np.zeros(0, dtype=BRANCH_DTYPE)
        seq = ids if self.last is None else np.concatenate(
            [np.array([self.last], dtype=ids.dtype), ids])
        self.last = int(ids[-1])
        if len(seq) < 2:
            return np.zeros(0, dtype=BRANCH_DTYPE)
        return self.table.fill(seq, self.table.taken(seq), None)

    def cut(self) -> None:
        self.last = None


def taken_pairs(first: np.ndarray, second: np.ndarray, blocks: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """Which of the id pairs ``first[k] -> second[k]`` are taken branches (by the rules
    of :func:`decode_blocks`), as (their indices ``k``, their branches)."""
    table = _Table(blocks)
    seq = np.empty(2 * len(first), np.uint32)
    seq[0::2], seq[1::2] = first, second
    at = table.taken(seq)
    at = at[at % 2 == 0]                  # pair k is seq[2k] -> seq[2k + 1]
    return at // 2, table.fill(seq, at, None)


def table_columns(blocks: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The block table's columns (start, end, last, kind, flags) as the compiled decoder
    takes them (jit.bind), each with the sentinel row for unknown ids."""
    return _Table(blocks).columns()


def _two_passes(table: _Table, ids: np.ndarray, spans: list[tuple[int, int]],
                pool: ThreadPoolExecutor) -> np.ndarray:
    found = list(pool.map(lambda span: table.taken(ids[span[0]:span[1] + 1]), spans))
    starts = np.cumsum([0] + [len(at) for at in found])
    out = np.empty(int(starts[-1]), dtype=BRANCH_DTYPE)

    def fill(k: int) -> None:
        lo, hi = spans[k]
        table.fill(ids[lo:hi + 1], found[k], out[starts[k]:starts[k + 1]])

    list(pool.map(fill, range(len(spans))))
    return out


class _Table:
    """The block table's columns, each with one sentinel row (index ``n``) that stands
    for every id the table does not know."""

    def __init__(self, blocks: np.ndarray) -> None:
        self.n = n = len(blocks)
        # the sentinel in each column's own type: np.append(uint64 column, 0) goes
        # through float64 (uint64 and int64 meet there), which rounds addresses above
        # 2**53 (the vsyscall page's, 0xffffffffff600000) and warns near 2**64
        self.flags = np.append(blocks["flags"].astype(np.uint8), np.uint8(0))
        self.start = np.append(blocks["start"].astype(np.uint64), np.uint64(0))
        self.end = np.append(blocks["end"].astype(np.uint64), np.uint64(0))
        self.last = np.append(blocks["last"].astype(np.uint64), np.uint64(0))
        self.kind = np.append(blocks["kind"].astype(np.uint8), np.uint8(0))
        self.hooked = bool(np.any(self.flags[:n] & FLAG_HOOKED))
        self.interrupts = bool(np.any(self.flags[:n] & FLAG_ASYNC))

    def columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """start, end, last, kind and flags, as the compiled decoder takes them."""
        return self.start, self.end, self.last, self.kind, self.flags

    def rows(self, chunk: np.ndarray) -> np.ndarray:
        """The table row of each id (native-width indices, which gather twice as fast
        as uint32 ones); unknown ids get the sentinel row."""
        idx = chunk.astype(np.intp)
        if chunk.dtype.kind == "u":
            np.minimum(idx, self.n, out=idx)
        else:
            idx[(idx < 0) | (idx >= self.n)] = self.n
        return idx

    def taken(self, chunk: np.ndarray) -> np.ndarray:
        """Positions ``i`` in ``chunk`` where ``chunk[i] -> chunk[i + 1]`` is a taken
        branch. Each column is gathered once per id (``prev`` and ``cur`` are the same
        gather, shifted)."""
        idx = self.rows(chunk)
        starts = self.start.take(idx)
        flags = self.flags.take(idx)
        taken = starts[1:] != self.end.take(idx[:-1])
        # Both ends known, and not both outside the --only modules.
        both = flags[:-1] & flags[1:]
        taken &= (both & np.uint8(FLAG_VALID | FLAG_FOREIGN)) == FLAG_VALID
        if self.hooked:
            at = np.flatnonzero(taken & ((flags[:-1] & np.uint8(FLAG_HOOKED)) != 0))
            prev, cur = starts[at], starts[at + 1]
            # >=: a hook's own code may call the hooked function again (Frida's
            # sigaction replacement does), which enters the hook's block once more
            resumed = (cur >= prev) & (cur <= prev + np.uint64(HOOK_RESUME_SPAN))
            taken[at[resumed]] = False
        return np.flatnonzero(taken)

    def fill(self, chunk: np.ndarray, at: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        """The branches at positions ``at`` of ``chunk``, written into ``out`` (a new
        array when None)."""
        src = self.rows(chunk.take(at))
        dst = self.rows(chunk.take(at + 1))
        if out is None:
            out = np.empty(len(at), dtype=BRANCH_DTYPE)
        out["from_ip"] = self.last.take(src)
        out["to_ip"] = self.start.take(dst)
        kinds = self.kind.take(src)
        if self.interrupts:
            entered = (self.flags.take(dst) & np.uint8(FLAG_ASYNC)) != 0
            kinds = np.where(entered, np.uint8(BranchKind.INTERRUPT), kinds)
        out["kind"] = kinds
        return out


def concat(parts: list[np.ndarray], dtype: np.dtype) -> np.ndarray:
    """Join drained pieces (possibly none) into one array. Rows are copied as bytes:
    numpy copies packed structured rows field by field, ten times slower."""
    if not parts:
        return np.zeros(0, dtype=dtype)
    if len(parts) == 1:
        return parts[0]
    raw = np.concatenate([np.ascontiguousarray(part).view(np.uint8) for part in parts])
    return raw.view(dtype)
