"""What the compiled counters (pairs.py, run_counter.py) share: an open-addressing hash
table of distinct 64-bit keys with counts, grown by re-inserting into a larger one, and
compiling their loops with numba once per process.

``EMPTY`` marks a free slot (no key the counters make packs to it); a key's slot is
found by Fibonacci hashing, ``(key * 0x9E3779B97F4A7C15) >> shift``, then linear probing.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from . import jit

EMPTY = np.uint64(0xFFFF_FFFF_FFFF_FFFF)


def hash_insert(old_keys, old_counts, keys, counts, shift):  # type: ignore[no-untyped-def]
    """Put distinct keys with their counts into an empty, larger table."""
    mask = np.uint64(len(keys) - 1)
    for i in range(len(old_keys)):
        key = old_keys[i]
        h = (key * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(shift)
        while keys[h] != EMPTY:
            h = (h + np.uint64(1)) & mask
        keys[h] = key
        counts[h] = old_counts[i]


class Compiled:
    """Functions compiled with numba (cached on disk, releasing the GIL) on first use,
    once per process; :meth:`get` gives them, or None when numba is off or missing or
    cannot compile here (the caller's numpy path then)."""

    def __init__(self, *functions: Callable[..., Any]) -> None:
        self._functions = functions
        self._compiled: tuple[Any, ...] | bool | None = None
        self._lock = threading.Lock()          # threads of a pool may ask at once

    def get(self) -> tuple[Any, ...] | None:
        if self._compiled is None and jit.enabled():
            with self._lock:
                if self._compiled is None:
                    try:
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            from numba import njit

                            self._compiled = tuple(njit(cache=True, nogil=True)(f)
                                                   for f in self._functions)
                    except Exception:  # noqa: BLE001 - cannot compile here: numpy it is
                        self._compiled = False
        return self._compiled if isinstance(self._compiled, tuple) else None
