"""Block ids -> branches in one compiled pass per id, when numba is installed (the
``fast`` extra). The same rules as :func:`branchtrace.decode.decode_blocks`, which
falls back to numpy without it; the two agree exactly (tests/unit/test_decode_jit.py).

numpy needs about ten passes over every id (gathers, compares, temporaries); compiled,
it is one loop that keeps the previous block in registers: 2-3x faster per core, and
no temporaries. Compiling costs about a second the first time (then numba's cache, in
``__pycache__``, when it is writable), so :func:`available` is only asked for long id
sequences. ``BRANCHTRACE_JIT=0`` turns it off. :func:`bind` gives the decoder of one
block table for ids that come piece by piece (fused.py).
"""

from __future__ import annotations

import importlib.util
import os
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..store.blocks import FLAG_ASYNC, FLAG_FOREIGN, FLAG_HOOKED, FLAG_VALID, HOOK_RESUME_SPAN
from ..bigarrays import big_empty
from ..model import BRANCH_DTYPE, BranchKind

_kernels: tuple[Any, Any] | None = None
_failed = False
_lock = threading.Lock()          # threads of a pool may ask at the same time


def available() -> bool:
    """Whether the compiled decoder can be used (numba importable and compiling)."""
    return _load() is not None


def enabled() -> bool:
    """Whether the compiled decoder may be available, without importing numba (which
    costs time and memory): not turned off, and numba installed. :func:`available` or
    :func:`bind` still say None when it does not compile."""
    if _kernels is not None:
        return True
    if _failed or os.environ.get("BRANCHTRACE_JIT") == "0":
        return False
    try:
        return importlib.util.find_spec("numba") is not None
    except (ImportError, ValueError):
        return False


def _load() -> tuple[Any, Any] | None:
    global _kernels, _failed
    if _kernels is not None or _failed:
        return _kernels
    with _lock:
        if _kernels is not None or _failed:
            return _kernels
        if os.environ.get("BRANCHTRACE_JIT") == "0":
            _failed = True
            return None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")      # e.g. "cannot cache": it still compiles
                from numba import njit

                _kernels = (njit(cache=True, nogil=True)(_count),
                            njit(cache=True, nogil=True)(_fill))
        except Exception:  # noqa: BLE001 - no numba, or it cannot compile here: use numpy
            _failed = True
        return _kernels


def bind(start: np.ndarray, end: np.ndarray, last: np.ndarray, kind: np.ndarray,
         flags: np.ndarray) -> Callable[[np.ndarray, np.ndarray], int] | None:
    """The decoder of one block table (columns as for :func:`decode`): ``run(ids, out)``
    writes the branches between consecutive ids of ``ids`` (uint32, at least two) into
    ``out`` (room for ``len(ids) - 1``) and says how many; None without numba."""
    kernels = _load()
    if kernels is None:
        return None
    fill = kernels[1]
    args = (start, end, last, kind, flags, np.int64(len(start) - 1),
            np.uint64(HOOK_RESUME_SPAN), np.uint8(FLAG_VALID), np.uint8(FLAG_FOREIGN),
            np.uint8(FLAG_HOOKED), np.uint8(FLAG_ASYNC), np.uint8(BranchKind.INTERRUPT))

    def run(ids: np.ndarray, out: np.ndarray) -> int:
        return int(fill(ids, *args, out))

    return run


def decode(ids: np.ndarray, start: np.ndarray, end: np.ndarray, last: np.ndarray,
           kind: np.ndarray, flags: np.ndarray, pool: ThreadPoolExecutor,
           parts: int) -> np.ndarray:
    """The branches of ``ids`` (columns with the sentinel row at index ``len - 1``), in
    ``parts`` spans that overlap by one id, counted then filled in parallel."""
    kernels = _load()
    assert kernels is not None
    count, fill = kernels
    n = np.int64(len(start) - 1)
    cuts = np.linspace(0, len(ids) - 1, parts + 1).astype(np.int64)
    spans = [ids[cuts[k]:cuts[k + 1] + 1] for k in range(parts)]
    consts = (np.uint64(HOOK_RESUME_SPAN), np.uint8(FLAG_VALID), np.uint8(FLAG_FOREIGN),
              np.uint8(FLAG_HOOKED))
    counts = list(pool.map(lambda s: count(s, start, end, flags, n, *consts), spans))
    at = np.cumsum([0, *counts])
    out = big_empty(int(at[-1]), BRANCH_DTYPE)
    list(pool.map(lambda k: fill(spans[k], start, end, last, kind, flags, n, *consts,
                                 np.uint8(FLAG_ASYNC), np.uint8(BranchKind.INTERRUPT),
                                 out[at[k]:at[k + 1]]), range(parts)))
    return out


def _count(ids, start, end, flags, n, span, valid, foreign, hooked):  # type: ignore[no-untyped-def]
    found = 0
    prev = min(np.int64(ids[0]), n)
    for i in range(1, ids.shape[0]):
        cur = min(np.int64(ids[i]), n)
        if start[cur] != end[prev] and (flags[prev] & flags[cur] & (valid | foreign)) == valid \
                and not ((flags[prev] & hooked) != 0 and start[prev] <= start[cur] <= start[prev] + span):
            found += 1
        prev = cur
    return found


def _fill(ids, start, end, last, kind, flags, n, span, valid, foreign, hooked,  # type: ignore[no-untyped-def]
          async_flag, interrupt, out):
    found = 0
    prev = min(np.int64(ids[0]), n)
    for i in range(1, ids.shape[0]):
        cur = min(np.int64(ids[i]), n)
        if start[cur] != end[prev] and (flags[prev] & flags[cur] & (valid | foreign)) == valid \
                and not ((flags[prev] & hooked) != 0 and start[prev] <= start[cur] <= start[prev] + span):
            out[found].from_ip = last[prev]
            out[found].to_ip = start[cur]
            out[found].kind = interrupt if (flags[cur] & async_flag) != 0 else kind[prev]
            found += 1
        prev = cur
    return found
