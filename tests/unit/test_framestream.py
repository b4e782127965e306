"""analysis/framestream.py and the streamed perfetto and speedscope reporters: the frame
rows walked over block ids chunk by chunk equal those of call_trace over the decoded
branches in memory (compiled and in Python, whatever the pieces, holes, gaps and
threads; however small the batches); the chunk-by-chunk clock is the Timeline; the
streamed JSON holds the same events as the JSON made in memory, and as the reporters
wrote before they streamed (their algorithm kept here as the oracle); importers that
sort by ts nest every event; memory flat in the trace.

Block tables and random id sequences are test_contexts.py's: every hazard of the
stack rules happens (returns with no call, unwinding, lowered baselines, tail calls,
jumps into other functions, fall-through, sigreturns, gaps)."""

from __future__ import annotations

import io
import json
import tracemalloc
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_analysis import FakeSymbols, make_trace
from test_contexts import TABLE, _long, _thread, _walkish

from branchtrace.analysis import contexts
from branchtrace.analysis.callstack import call_trace
from branchtrace.analysis.code import CodeReader
from branchtrace.analysis.contexts import BlockFunctions
from branchtrace.analysis.framestream import Clock, FrameRows, block_frames, call_rows
from branchtrace.analysis.functions import FunctionIndex
from branchtrace.analysis.timeline import Timeline, micros_text
from branchtrace.model import BranchKind, Gap
from branchtrace.reporters import perfetto, speedscope
from branchtrace.reporters.collapsed import BlockSource
from branchtrace.trace import CHUNK_TIMES_DTYPE

K = BranchKind
START = 1_700_000_000.0


class TimedPiece:
    """A piece of block ids with the span its chunk was drained in."""

    def __init__(self, ids: np.ndarray, after_hole: bool, first_ns: int, last_ns: int) -> None:
        self.ids, self.after_hole, self.first_ns, self.last_ns = ids, after_hole, first_ns, last_ns


def _timed(pieces, branches_per_piece, rng) -> tuple[list[TimedPiece], np.ndarray]:
    """The pieces with increasing (sometimes overlapping) spans, and the trace's chunk
    times for the branches each piece decodes to."""
    out, rows, at, index = [], [], int(START * 1e9) + 1000, 0
    for p, count in zip(pieces, branches_per_piece):
        first = at + int(rng.integers(-300, 2000))
        last = first + int(rng.integers(0, 50_000))
        at = last
        out.append(TimedPiece(p.ids, p.after_hole, first, last))
        if count:
            rows.append((index, count, first, last))
        index += count
    return out, np.array(rows, dtype=CHUNK_TIMES_DTYPE)


def _case(seed: int, n: int, cuts: list[int], holes: set[int], lost: list[int], tids=(1,)):
    """Threads of random ids: their pieces (timed), gaps, and the trace in memory."""
    rng = np.random.default_rng(seed)
    threads, rows, gaps, times = {}, {}, [], {}
    for t in tids:
        pieces, gap_at, branches, at_holes = _thread(_walkish(rng, n), cuts, holes, lost)
        counts = _counts(pieces)
        timed, times[t] = _timed(pieces, counts, rng)
        threads[t] = (timed, gap_at)
        rows[t] = [(K(int(b["kind"])), int(b["from_ip"]), int(b["to_ip"])) for b in branches]
        gaps += [Gap(t, i, 1, "lost") for i in gap_at] + [Gap(t, i, 4, "hole") for i in at_holes]
    trace = make_trace([], gaps=gaps, threads=rows, start=START,
                       end=START + 0.01 * (1 + n / 100))
    trace.chunk_times.update(times)
    return trace, threads


def _counts(pieces) -> list[int]:
    """The branches each piece decodes to (the branch across a piece edge is the later
    piece's; none across a hole)."""
    from branchtrace.decode import Carry

    carry = Carry(TABLE)
    out = []
    for p in pieces:
        if p.after_hole:
            carry.cut()
        out.append(len(carry.feed(p.ids)))
    return out


def _streamed(trace, threads, tid, compiled=True) -> tuple[FrameRows, Clock]:
    functions = FunctionIndex(trace.symbolizer)
    table = BlockFunctions(TABLE, functions, CodeReader(functions.symbolizer))
    batches: list[FrameRows] = []
    clock = Clock(trace.start_time, trace.end_time)
    pieces, gaps = threads[tid]
    block_frames(table, pieces, gaps, clock, batches.append, compiled)
    return _join(batches), clock


def _join(batches: list[FrameRows]) -> FrameRows:
    if not batches:
        e = np.zeros(0, np.int64)
        return FrameRows(np.zeros(0, np.uint64), e, e, e, e)
    return FrameRows(*(np.concatenate([getattr(b, f) for b in batches])
                       for f in ("function", "at", "close", "depth", "parent")))


def _same(a: FrameRows, b: FrameRows) -> None:
    for f in ("function", "at", "close", "depth", "parent"):
        assert getattr(a, f).tolist() == getattr(b, f).tolist(), f


def _source(threads, compiled=True) -> BlockSource:
    return BlockSource(TABLE, lambda t: threads[t], compiled,
                       gaps=lambda t: [Gap(t, i, 1, "lost") for i in threads[t][1]])


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 400),
       st.lists(st.integers(0, 10**6), max_size=6), st.sets(st.integers(0, 7), max_size=3),
       st.lists(st.integers(0, 10**6), max_size=3))
def test_streamed_frames_are_call_traces_frames(seed, n, cuts, holes, lost):
    trace, threads = _case(seed, n, cuts, holes, lost)
    rows, clock = _streamed(trace, threads, 1)
    _same(rows, call_rows(call_trace(trace, 1)))
    timeline = Timeline(trace, 1)
    positions = np.arange(len(trace.branches(1)) + 2)
    assert clock.n == len(trace.branches(1))
    assert clock.ns(positions).tolist() == timeline.ns(positions).tolist()
    assert clock.end_ns == timeline.end_ns


def test_in_python_as_compiled_and_in_small_batches(monkeypatch):
    trace, threads = _case(7, 3000, [500, 1700, 2999], {2}, [40, 900], tids=(1, 2))
    expected = {t: call_rows(call_trace(trace, t)) for t in (1, 2)}
    assert len(expected[1]) > 200
    for t in (1, 2):
        _same(_streamed(trace, threads, t, compiled=False)[0], expected[t])
    monkeypatch.setattr(contexts, "_ROW_ROOM", 3)      # a flush every few frames, and
    for t in (1, 2):                                  # rows grown for the deep stacks
        _same(_streamed(trace, threads, t)[0], expected[t])


def test_clock_without_a_time_span_counts_microseconds():
    clock = Clock(0.0, 0.0)
    clock.add(10, 5, 7)
    assert clock.ns(np.array([0, 1, 10, 11])).tolist() == [0, 1000, 10_000, 11_000]
    assert clock.end_ns == 11_000 and "no time span" in clock.note


# --- the JSON: streamed and in memory, and as written before it streamed ---------------

def _render(module, trace, source=None) -> dict:
    out = io.StringIO()
    module.render(trace, out, source=source)
    return json.loads(out.getvalue())


def _complete(doc) -> Counter:
    """The complete events, depths from the shallowest of their thread."""
    xs = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    low: dict[int, int] = {}
    for e in xs:
        low[e["tid"]] = min(low.get(e["tid"], 0), e["args"]["depth"])
    return Counter((e["tid"], e["name"], e["ts"], e["dur"], e["args"]["depth"] - low[e["tid"]])
                   for e in xs)


def _old_perfetto(trace) -> Counter:
    """What reporters/perfetto.py wrote before it streamed (one event per call_trace
    frame, depth from the shallowest frame), as _complete counts them."""
    out: Counter = Counter()
    for t in trace.threads:
        ct = call_trace(trace, t)
        timeline = Timeline(trace, t)
        begin = timeline.ticks(ct.frame_open // 2)
        end = timeline.ticks(ct.frame_close // 2)
        for key, depth, ts, dur in zip(ct.frame_function.tolist(), ct.frame_depth.tolist(),
                                       micros_text(begin), micros_text(end - begin)):
            out[(t, ct.functions.name(key), json.loads(ts), json.loads(dur), depth)] += 1
    return out


def _old_speedscope(trace, t) -> list[tuple[str, str, float]]:
    """The events reporters/speedscope.py wrote for thread ``t`` before it streamed."""
    ct = call_trace(trace, t)
    timeline = Timeline(trace, t)
    m = len(ct.frame_function)
    pos = np.concatenate((ct.frame_open, ct.frame_close))
    is_open = np.concatenate((np.ones(m, np.int64), np.zeros(m, np.int64)))
    depth = np.concatenate((ct.frame_depth, -ct.frame_depth))
    order = np.lexsort((depth, is_open, pos))
    keys = np.concatenate((ct.frame_function, ct.frame_function))[order].tolist()
    at = micros_text(timeline.ticks(pos[order] // 2))
    return [("O" if o else "C", ct.functions.name(k), json.loads(a))
            for o, k, a in zip(is_open[order].tolist(), keys, at)]


def _events(doc, p: int) -> list[tuple[str, str, float]]:
    names = [f["name"] for f in doc["shared"]["frames"]]
    return [(e["type"], names[e["frame"]], e["at"]) for e in doc["profiles"][p]["events"]]


def check_importer_nesting(doc) -> None:
    """What an importer that sorts by ts, keeping the file's order for equal ts, makes
    of the complete events (Perfetto's slice tracker, speedscope's Chrome importer):
    every event lies inside the one still open under it, and (unless it takes no
    time) that one is its caller, one level less deep."""
    per: dict[int, list[dict]] = {}
    for e in doc["traceEvents"]:
        if e["ph"] == "X":
            per.setdefault(e["tid"], []).append(e)
    for events in per.values():
        stack: list[dict] = []
        for e in sorted(events, key=lambda e: e["ts"]):
            while stack and stack[-1]["ts"] + stack[-1]["dur"] <= e["ts"]:
                stack.pop()
            if stack:
                top = stack[-1]
                assert top["ts"] <= e["ts"] and \
                    e["ts"] + e["dur"] <= top["ts"] + top["dur"], (top, e)
                if e["dur"] > 0:
                    assert top["args"]["depth"] == e["args"]["depth"] - 1, (top, e)
            stack.append(e)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 300),
       st.lists(st.integers(0, 10**6), max_size=4), st.sets(st.integers(0, 5), max_size=2),
       st.lists(st.integers(0, 10**6), max_size=2))
def test_streamed_json_holds_the_events_of_before(seed, n, cuts, holes, lost):
    trace, threads = _case(seed, n, cuts, holes, lost, tids=(1, 2))
    source = _source(threads)
    streamed = _render(perfetto, trace, source)
    in_memory = _render(perfetto, trace)
    assert _complete(streamed) == _complete(in_memory) == _old_perfetto(trace)
    check_importer_nesting(streamed)
    scope = _render(speedscope, trace, source)
    assert scope == _render(speedscope, trace)
    for p, t in enumerate((1, 2)):
        old = _old_speedscope(trace, t)
        ct = call_trace(trace, t)
        lowered = int((ct.frame_open == 0).sum()) - (len(ct.frame_function) > 0)
        if not lowered:                     # the same events, in the same order
            assert _events(scope, p) == old
        else:                               # a frame found under the bottom one opens
            assert Counter(_events(scope, p)) - Counter(old) == Counter(   # where found
                e for e in _events(scope, p) if e[0] == "O") - Counter(
                e for e in old if e[0] == "O")
            assert sorted(e for e in _events(scope, p) if e[0] == "C") == \
                sorted(e for e in old if e[0] == "C")


def test_a_callee_that_starts_with_its_caller_comes_after_it():
    """Chunks drained in no time: all their calls start at the same ts. The file has
    each caller before its callees of equal ts, though the callees close first."""
    trace, threads = _case(3, 3000, [700, 1500, 2200], set(), [])
    for t, (pieces, gaps) in threads.items():
        threads[t] = ([TimedPiece(p.ids, p.after_hole, p.first_ns, p.first_ns)
                       for p in pieces], gaps)
        times = trace.chunk_times[t].copy()
        times["last_ns"] = times["first_ns"]
        trace.chunk_times[t] = times
    doc = _render(perfetto, trace, _source(threads))
    assert _complete(doc) == _complete(_render(perfetto, trace)) == _old_perfetto(trace)
    check_importer_nesting(doc)
    xs = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    pairs = {(e["ts"], e["args"]["depth"]) for e in xs}
    assert sum((e["ts"], e["args"]["depth"] - 1) in pairs and e["dur"] > 0 for e in xs) > 20
    with pytest.raises(AssertionError):                 # callees first: mis-nested
        check_importer_nesting({"traceEvents": sorted(
            xs, key=lambda e: (e["ts"], -e["args"]["depth"]))})


def _peak(n: int) -> tuple[int, int]:
    functions = FunctionIndex(FakeSymbols())
    table = BlockFunctions(TABLE, functions, CodeReader(functions.symbolizer))
    sink = _Count()
    block_frames(table, _long(1), [], Clock(0.0, 0.0), sink)     # compiled and warm
    tracemalloc.start()
    try:
        sink = _Count()
        n = block_frames(table, iter(_long(n)), [], Clock(0.0, 0.0), sink)
        return sink.rows, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


class _Count:
    def __init__(self) -> None:
        self.rows = 0

    def __call__(self, rows: FrameRows) -> None:
        self.rows += len(rows)


def test_memory_does_not_grow_with_the_frames():
    small, peak_small = _peak(8)                    # 2 rows per call of f
    big, peak_big = _peak(80)
    assert small > 8 * (1 << 14) and big > 80 * (1 << 14)
    assert peak_big < peak_small * 1.5 + (512 << 10), (peak_small, peak_big)


if __name__ == "__main__":
    pytest.main([__file__])


# --- from/to files: decoded pieces (tracefile.stream.ThreadStream) ----------------------

def _pieces_case(seed: int, n: int, cuts: list[int], lost: list[int]):
    """A thread's branches cut into chunks (each with its own span) and the file's gaps
    among them, which cut a chunk in two pieces of the same span, as ThreadStream does."""
    from branchtrace.tracefile.stream import Piece

    rng = np.random.default_rng(seed)
    _, _, branches, _ = _thread(_walkish(rng, n), [], set(), [])
    m = len(branches)
    bounds = sorted({0, m, *[c % (m + 1) for c in cuts]})
    gap_at = sorted({g % (m + 1) for g in lost})
    items: list = []
    rows = []
    at = int(START * 1e9) + 1000
    for a, b in zip(bounds, bounds[1:]):
        first = at + int(rng.integers(-300, 2000))
        last = first + int(rng.integers(0, 50_000))
        at = last
        rows.append((a, b - a, first, last))
        inner = [a] + [g for g in gap_at if a < g < b] + [b]
        for lo, hi in zip(inner, inner[1:]):
            if lo in gap_at:
                items.append(Gap(1, lo, 1, "lost"))
            items.append(Piece(1, lo, branches[lo:hi], first, last))
    if m in gap_at:
        items.append(Gap(1, m, 1, "lost"))
    rows_k = [(K(int(x["kind"])), int(x["from_ip"]), int(x["to_ip"])) for x in branches]
    trace = make_trace(rows_k, gaps=[Gap(1, g, 1, "lost") for g in gap_at], start=START,
                       end=START + 0.01 * (1 + n / 100))
    trace.chunk_times[1] = np.array(rows, dtype=CHUNK_TIMES_DTYPE)
    return trace, items


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 400),
       st.lists(st.integers(0, 10**6), max_size=6), st.lists(st.integers(0, 10**6), max_size=3))
def test_frames_of_decoded_pieces_are_call_traces_frames(seed, n, cuts, lost):
    from branchtrace.analysis.framestream import piece_frames

    trace, items = _pieces_case(seed, n, cuts, lost)
    functions = FunctionIndex(trace.symbolizer)
    clock = Clock(trace.start_time, trace.end_time)
    batches: list[FrameRows] = []
    gaps = piece_frames(functions, CodeReader(trace.symbolizer), items, clock, batches.append)
    _same(_join(batches), call_rows(call_trace(trace, 1)))
    assert [g.index for g in gaps] == sorted(g.index for g in trace.gaps)
    positions = np.arange(len(trace.branches(1)) + 2)
    assert clock.ns(positions).tolist() == Timeline(trace, 1).ns(positions).tolist()
