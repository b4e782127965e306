"""Function identity: which function an address belongs to, as one integer key.

A function is keyed by its run-time start address (``address - offset`` when the
symbol tables know it), so two static functions of the same name stay apart and a
key can be compared with ``==`` in bulk. Code that no symbol covers is keyed by its
module (``module index + 1``; 0 outside every module): GDB likewise treats a run of
unnamed code as one ``??`` function. Keys are computed for whole arrays at once; the
names and source locations of the keys met so far are remembered.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..symbols import Symbolizer

#: Keys below this are "unknown code in module key-1" (0: outside every module).
#: Real function starts are run-time addresses, far above it.
UNKNOWN_LIMIT = 1 << 16


@dataclass(frozen=True, slots=True)
class FunctionInfo:
    """What a report says about one function key."""

    key: int
    name: str                 # "fib", or "?? (libc.so.6)" for unnamed code
    module: str | None        # the module's base name
    file: str | None = None   # source file of the function's first line (full path)
    line: int | None = None

    @property
    def known(self) -> bool:
        return self.key >= UNKNOWN_LIMIT


@dataclass(frozen=True, slots=True, eq=False)
class Keys:
    """Function keys of an address array, and which addresses are function starts."""

    key: np.ndarray      # uint64, one per address
    start: np.ndarray    # bool: the address is the first byte of a named function


class FunctionIndex:
    """Function keys for the addresses of one trace (one :class:`Symbolizer`)."""

    def __init__(self, symbolizer: Symbolizer) -> None:
        self.symbolizer = symbolizer
        # function lookups need no line tables (DWARF decoding is the slow part); a
        # symbolizer of another kind (a test's) is used as it is
        self._functions_only = (Symbolizer(symbolizer.modules, lines=False,
                                           demangled=symbolizer.demangled)
                                if type(symbolizer) is Symbolizer else symbolizer)
        self._info: dict[int, FunctionInfo] = {}
        self._located = False

    def keys(self, addresses: np.ndarray) -> Keys:
        """The function key of every address (one symbolizer pass over distinct ones)."""
        a = np.ascontiguousarray(addresses, dtype=np.uint64).ravel()
        if len(a) == 0:
            return Keys(np.zeros(0, np.uint64), np.zeros(0, bool))
        u, inverse = np.unique(a, return_inverse=True)
        res = self._functions_only.resolve(u)
        known = res.function >= 0
        unknown_key = (res.module.astype(np.int64) + 1).astype(np.uint64)
        key_u = np.where(known, res.address - res.offset, unknown_key)
        start_u = known & (res.offset == 0)
        # Remember a name per new key (a loop over distinct functions only).
        new_keys, first = np.unique(key_u, return_index=True)
        modules = self.symbolizer.modules
        for k, i in zip(new_keys.tolist(), first.tolist()):
            if k in self._info:
                continue
            m = int(res.module[i])
            module = modules[m].name if m >= 0 else None
            f = int(res.function[i])
            if f >= 0:
                name = res.function_names[f]
            else:
                name = f"?? ({module})" if module else "??"
            self._info[k] = FunctionInfo(k, name, module)
            self._located = False
        return Keys(key_u[inverse], start_u[inverse])

    def info(self, key: int) -> FunctionInfo:
        found = self._info.get(key)
        if found is None:
            found = FunctionInfo(key, "??", None)
        return found

    def name(self, key: int) -> str:
        return self.info(key).name

    def locate(self) -> None:
        """Fill in the source file and line of each known function's first byte."""
        if self._located:
            return
        todo = [k for k, v in self._info.items() if v.known and v.file is None]
        if todo:
            res = self.symbolizer.resolve(np.array(todo, dtype=np.uint64))
            for i, k in enumerate(todo):
                loc = res.location(i)
                old = self._info[k]
                self._info[k] = FunctionInfo(k, old.name, old.module, loc.file, loc.line)
        self._located = True

    def source(self, key: int) -> tuple[str | None, int | None]:
        """(source file base name, line) of the function's first byte, after :meth:`locate`."""
        info = self.info(key)
        return (os.path.basename(info.file) if info.file else None), info.line
