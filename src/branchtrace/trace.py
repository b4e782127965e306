"""A recorded trace: per-thread branch arrays, module maps, gaps, and how the target ended.

This is what reporters read. A :class:`Trace` comes from a live recording
(:func:`branchtrace.recorder.record`); later, from a trace file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from .model import BRANCH_DTYPE, Branch, ExitInfo, Gap, ModuleMap, branches_of

if TYPE_CHECKING:
    from .symbols import Symbolizer


@dataclass
class Trace:
    backend: str
    mode: str                                  # "ring" or "stream"
    argv: tuple[str, ...]
    pid: int
    exit: ExitInfo
    modules: list[ModuleMap]
    threads: dict[int, np.ndarray]             # tid -> BRANCH_DTYPE array, oldest first
    gaps: list[Gap] = field(default_factory=list)
    written: dict[int, int] = field(default_factory=dict)   # records produced per thread
    lost: dict[int, int] = field(default_factory=dict)      # records lost per thread
    notes: list[str] = field(default_factory=list)
    start_time: float = 0.0
    end_time: float = 0.0
    producer_waits: int = 0
    _symbolizer: Symbolizer | None = field(default=None, repr=False)

    def branches(self, tid: int | None = None) -> np.ndarray:
        """The branches of one thread (default: the first one), oldest first."""
        if tid is None:
            if not self.threads:
                return np.zeros(0, dtype=BRANCH_DTYPE)
            tid = next(iter(self.threads))
        return self.threads.get(tid, np.zeros(0, dtype=BRANCH_DTYPE))

    def __iter__(self) -> Iterator[Branch]:
        for tid, array in self.threads.items():
            yield from branches_of(array, tid)

    def total(self) -> int:
        return sum(len(a) for a in self.threads.values())

    @property
    def symbolizer(self) -> Symbolizer:
        if self._symbolizer is None:
            from .symbols import Symbolizer

            self._symbolizer = Symbolizer(self.modules)
        return self._symbolizer

    def symbolize(self, addresses: Sequence[int] | np.ndarray) -> list[object]:
        """Locations (module, function, offset, file, line) of the addresses."""
        sym = self.symbolizer
        return [sym.describe(int(a)) for a in np.asarray(addresses, dtype=np.uint64)]
