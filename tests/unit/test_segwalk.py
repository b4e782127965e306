"""analysis/segwalk.py: the compiled walk counts the segments of the Python stack pass,
and the call history read from any of its snapshots on is the call history read from
the start (``history --last N`` from the end of the file, history_tail.py).

Random block-id threads over test_contexts.py's table (calls, returns with no call,
unwinding, lowered baselines, tail calls, jumps into other functions, fall-through,
signal handlers and sigreturns)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_analysis import make_trace
from test_contexts import TABLE, _thread, _walkish

from branchtrace.analysis import stackwalk
from branchtrace.analysis.callstream import CallStream
from branchtrace.analysis.code import CodeReader
from branchtrace.analysis.contexts import BlockFunctions
from branchtrace.analysis.functions import FunctionIndex
from branchtrace.analysis.segwalk import NotHere, Snapshot, segment_walk
from branchtrace.model import BranchKind
from branchtrace.reporters import history_stream
from branchtrace.reporters.history_stream import Resume

pytestmark = pytest.mark.skipif(stackwalk.compiled() is None,
                                reason="the walk needs numba (the fast extra)")


def _history(trace, branches, last, snap: Snapshot | None) -> str:
    """stream_calls --last ``last`` of the thread, from ``snap`` on (None: the start)."""

    def resume(tid, functions, reader, insns):
        if snap is None:
            return None
        no_sig = (1 << 64) - 1
        stack = [(int(f), int(lo), int(hi), -1 if int(s) == no_sig else int(s))
                 for f, lo, hi, s in zip(snap.stack_func, snap.stack_lo, snap.stack_hi,
                                         snap.stack_sig)]
        before = int(branches["to_ip"][snap.branches - 1])
        calls = CallStream.resumed(functions, reader, branches=snap.branches,
                                   segments=snap.segments, lowest=snap.lowest,
                                   open_first=snap.open_first,
                                   before=(snap.function, before), stack=stack,
                                   base=snap.base)
        return Resume(calls, [branches[snap.branches:]], 0, before)

    out = io.StringIO()
    history_stream.stream_calls(trace, lambda t: [branches], out, last=last, resume=resume)
    return out.getvalue()


def _check(ids: np.ndarray, cuts: list[int], last: int, keep: int | None = None) -> int:
    """Check every snapshot the walk keeps (for the last ``keep`` segments: by default
    ``last``; more keeps more) that may show the last ``last``; how many."""
    pieces, _, branches, _ = _thread(ids, cuts, set(), [])
    if not len(branches):
        return 0
    trace = make_trace([(BranchKind(int(b["kind"])), int(b["from_ip"]), int(b["to_ip"]))
                        for b in branches])
    functions = FunctionIndex(trace.symbolizer)
    reader = CodeReader(trace.symbolizer)
    sw = segment_walk(BlockFunctions(TABLE, functions, reader), pieces, keep or last)
    whole = CallStream(functions, reader)
    done = len(whole.branches(branches)) + len(whole.finish())
    assert sw.segments == done
    assert sw.lowest == whole.lowest
    want = _history(trace, branches, last, None)
    tried = 0
    if sw.choice() is not None:
        assert sw.choice() in sw.snaps
    for snap in sw.snaps:
        if 0 < snap.branches < len(branches) and snap.segments + last <= sw.segments:
            assert _history(trace, branches, last, snap) == want, snap
            tried += 1
    return tried


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 600),
       st.lists(st.integers(0, 10**6), max_size=8), st.integers(1, 40))
def test_the_history_from_a_snapshot_is_the_history_from_the_start(seed, n, cuts, last):
    _check(_walkish(np.random.default_rng(seed), n), cuts, last)


def test_many_snapshots_are_tried():
    rng = np.random.default_rng(3)
    ids = _walkish(rng, 4000)
    assert _check(ids, list(range(100, 4000, 100)), 5, keep=10**6) > 20


def test_a_hole_is_not_walked():
    pieces, _, _, _ = _thread(_walkish(np.random.default_rng(1), 300), [100], {1}, [])
    trace = make_trace([])
    functions = FunctionIndex(trace.symbolizer)
    with pytest.raises(NotHere):
        segment_walk(BlockFunctions(TABLE, functions, CodeReader(trace.symbolizer)),
                     pieces, 3)
