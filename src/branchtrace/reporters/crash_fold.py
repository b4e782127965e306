"""Loops folded in the crash report's list of last branches.

A crash after a loop shows, branch by branch, only the loop: ``--last 16`` of a thread
that spun in ``checksum`` is sixteen times ``cond checksum+0x3f => checksum+0x11``. The
list is folded instead, newest first: where the branches just before some point repeat
one sequence of 1 to :data:`MAX_PERIOD` branches (equal kind, source and target) at least
twice, that sequence is shown once, with how many times it ran in a row (``×7``). The
report's ``--last N`` counts lines shown, so a folded screen reaches further back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_PERIOD = 8


@dataclass(frozen=True, slots=True)
class Fold:
    """``period`` branches starting at ``first`` (an index into the array folded), run
    ``times`` times in a row: the array's ``[first, first + period * times)``."""

    first: int
    period: int
    times: int

    @property
    def lines(self) -> int:
        """Lines it takes in the text report: a loop of several branches has a header."""
        return self.period + (1 if self.period > 1 else 0)


def fold(branches: np.ndarray, lines: int) -> list[Fold]:
    """Folds covering the newest branches of ``branches`` (oldest first, BRANCH_DTYPE),
    taking at most ``lines`` lines (at least one fold when there is a branch), oldest
    first."""
    key = _keys(branches)
    out: list[Fold] = []
    used = 0
    end = len(key)
    while end > 0:
        best = Fold(end - 1, 1, 1)
        for period in range(1, min(MAX_PERIOD, end // 2) + 1):
            times = _repeats(key, end, period)
            if times >= 2 and period * times > best.period * best.times:
                best = Fold(end - period * times, period, times)
        if out and used + best.lines > lines:
            break
        out.append(best)
        used += best.lines
        end = best.first
        if used >= lines:
            break
    out.reverse()
    return out


def _keys(branches: np.ndarray) -> np.ndarray:
    """Kind, source and target of each branch, as one comparable structured array."""
    k = np.empty(len(branches), dtype=[("f", "<u8"), ("t", "<u8"), ("k", "u1")])
    k["f"], k["t"], k["k"] = branches["from_ip"], branches["to_ip"], branches["kind"]
    return k


def _repeats(key: np.ndarray, end: int, period: int) -> int:
    """How many times ``key[end - period:end]`` repeats back to back, ending at ``end``:
    1 + (the length of the run of ``key[i] == key[i + period]`` ending at
    ``end - period``) // period, looked for in windows that double."""
    last = end - period                     # key[i] vs key[i + period] for i < last
    window = 256
    while True:
        lo = max(0, last - window)
        eq = key[lo:last] == key[lo + period:end]
        bad = np.flatnonzero(~eq)
        if len(bad):
            run = last - (lo + int(bad[-1]) + 1)
            break
        if lo == 0:
            run = last
            break
        window *= 2
    return 1 + run // period
