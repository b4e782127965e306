"""Raw store encodings -> canonical branch arrays (:data:`~branchtrace.model.BRANCH_DTYPE`).

Vectorized: numpy does the work, never a Python loop per record.
"""

from __future__ import annotations

import numpy as np

from .blocks import FLAG_ASYNC, FLAG_FOREIGN, FLAG_HOOKED, FLAG_VALID, HOOK_RESUME_SPAN
from .errors import TraceFormatError
from .model import BRANCH_DTYPE, BranchKind
from .store import RECORD_DTYPES, Encoding

_CHUNK = 1 << 22  # block ids decoded at a time


def decode(encoding: Encoding, records: np.ndarray, blocks: np.ndarray | None = None) -> np.ndarray:
    """Decode one thread's raw records (oldest first) into canonical branches.

    ``blocks`` is the block table the BLOCKID encoding refers to."""
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
        return decode_blocks(records, blocks)
    raise TraceFormatError(f"cannot decode records of encoding {int(encoding)}")


def decode_blocks(ids: np.ndarray, blocks: np.ndarray) -> np.ndarray:
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
    a hook of the tracer's (FLAG_HOOKED) goes on a few bytes further on, once the hook
    has run: that is no branch of the program's either. A signal handler's block
    (FLAG_ASYNC) is entered by an INTERRUPT from wherever the thread was.
    """
    ids = np.asarray(ids)
    if len(ids) < 2:
        return np.zeros(0, dtype=BRANCH_DTYPE)
    # Per-block columns, plus one sentinel row (index len(blocks)) for unknown ids.
    n = len(blocks)
    flags = np.append(blocks["flags"], 0).astype(np.uint8)
    start = np.append(blocks["start"], 0).astype(np.uint64)
    end = np.append(blocks["end"], 0).astype(np.uint64)
    last = np.append(blocks["last"], 0).astype(np.uint64)
    kind = np.append(blocks["kind"], 0).astype(np.uint8)
    known = (flags & FLAG_VALID) != 0
    foreign = (flags & FLAG_FOREIGN) != 0
    hooked = (flags & FLAG_HOOKED) != 0
    interrupt = (flags & FLAG_ASYNC) != 0
    pieces = []
    for lo in range(0, len(ids) - 1, _CHUNK):  # bounded temporaries, never per record
        chunk = ids[lo:lo + _CHUNK + 1].astype(np.int64)
        chunk[(chunk < 0) | (chunk >= n)] = n
        prev, cur = chunk[:-1], chunk[1:]
        taken = (start[cur] != end[prev]) & known[prev] & known[cur]
        taken &= ~(foreign[prev] & foreign[cur])
        resumed = hooked[prev] & (start[cur] > start[prev]) & (
            start[cur] <= start[prev] + np.uint64(HOOK_RESUME_SPAN))
        taken &= ~resumed
        p, c = prev[taken], cur[taken]
        out = np.empty(len(p), dtype=BRANCH_DTYPE)
        out["from_ip"] = last[p]
        out["to_ip"] = start[c]
        out["kind"] = np.where(interrupt[c], np.uint8(BranchKind.INTERRUPT), kind[p])
        pieces.append(out)
    return concat(pieces, BRANCH_DTYPE)


def concat(parts: list[np.ndarray], dtype: np.dtype) -> np.ndarray:
    """Join drained pieces (possibly none) into one array."""
    if not parts:
        return np.zeros(0, dtype=dtype)
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts)
