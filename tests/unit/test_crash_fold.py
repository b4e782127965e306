"""Loops folded in the crash report's last branches (reporters/crash_fold.py)."""

from __future__ import annotations

import numpy as np

from branchtrace.model import BRANCH_DTYPE
from branchtrace.reporters.crash_fold import Fold, fold

A, B, C, D = (1, 2), (3, 4), (5, 6), (7, 8)


def branches(seq):
    b = np.zeros(len(seq), BRANCH_DTYPE)
    b["from_ip"] = [s[0] for s in seq]
    b["to_ip"] = [s[1] for s in seq]
    b["kind"] = 4
    return b


def test_runs_of_one_branch_and_of_several():
    got = fold(branches([D] + [A] * 7 + [B, C] * 5 + [D]), 16)
    assert got == [Fold(0, 1, 1), Fold(1, 1, 7), Fold(8, 2, 5), Fold(18, 1, 1)]
    assert sum(f.lines for f in got) == 1 + 1 + 3 + 1


def test_lines_bound_what_is_shown_and_reach_further_back():
    seq = [C] * 3 + [A, B] * 1000 + [D]
    got = fold(branches(seq), 4)
    assert got == [Fold(3, 2, 1000), Fold(2003, 1, 1)]      # 4 lines: 2003 branches
    assert fold(branches(seq), 1) == [Fold(2003, 1, 1)]


def test_nothing_repeats_and_nothing_there():
    assert fold(branches([A, B, C, D]), 2) == [Fold(2, 1, 1), Fold(3, 1, 1)]
    assert fold(branches([]), 16) == []
    assert fold(branches([A] * 100_000), 3) == [Fold(0, 1, 100_000)]


def test_a_kind_that_differs_is_another_branch():
    b = branches([A] * 4)
    b["kind"][1] = 1
    assert fold(b, 16) == [Fold(0, 1, 1), Fold(1, 1, 1), Fold(2, 1, 2)]
