"""analysis/coverage_stream.py: coverage from branches that come piece by piece.

Every test of test_coverage.py (hand-worked blocks, edges and counts of a small program
held in memory: loops, the tail, interrupts, gaps, impossible runs, a known start
point) runs again here with ``compute`` replaced by the streaming one, the branches cut
into pieces at several places (single branches included) and the gaps yielded between
them: the expected values are those tests' own."""

from __future__ import annotations

import inspect
from collections.abc import Iterator

import numpy as np
import pytest

import test_coverage
from branchtrace.analysis.code import CodeReader
from branchtrace.analysis.coverage import Coverage
from branchtrace.analysis.coverage_stream import compute_streamed
from branchtrace.model import Gap
from branchtrace.trace import Trace


def pieces(trace: Trace, tid: int, cuts: int) -> Iterator[np.ndarray | Gap]:
    """The thread's branches cut at ``cuts`` places (from a seeded generator) and at every
    gap, with the gaps in between, as a trace file's stream gives them."""
    arr = trace.threads[tid]
    rng = np.random.default_rng(cuts)
    gaps = sorted((g for g in trace.gaps if g.tid == tid), key=lambda g: g.index)
    bounds = {0, len(arr), *(min(g.index, len(arr)) for g in gaps)}
    bounds |= set(rng.integers(0, len(arr) + 1, cuts).tolist()) if len(arr) else set()
    edges = sorted(bounds)
    g = 0
    for lo, hi in zip(edges, edges[1:] + [None]):
        while g < len(gaps) and min(gaps[g].index, len(arr)) == lo:
            yield gaps[g]
            g += 1
        if hi is not None and hi > lo:
            yield arr[lo:hi]


TESTS = [name for name, f in inspect.getmembers(test_coverage, inspect.isfunction)
         if name.startswith("test_") and ("cover(" in inspect.getsource(f)
                                          or "compute(" in inspect.getsource(f))
         and "million" not in name       # that one times the whole-trace path
         and not inspect.signature(f).parameters]


@pytest.mark.parametrize("cuts", [0, 3, 40])
@pytest.mark.parametrize("name", TESTS)
def test_the_coverage_tests_pass_streamed(name: str, cuts: int,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def streamed(trace: Trace, reader: CodeReader | None = None, *,
                 first_ips: dict[int, int] | None = None) -> Coverage:
        return compute_streamed(trace, lambda tid: pieces(trace, tid, cuts), reader,
                                first_ips=first_ips)

    monkeypatch.setattr(test_coverage, "compute", streamed)
    getattr(test_coverage, name)()


def test_the_coverage_tests_are_all_here() -> None:
    assert len(TESTS) >= 10, TESTS
