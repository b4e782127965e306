"""perfetto, speedscope and collapsed-stack reporters on built traces."""

from __future__ import annotations

import io
import json
import re

from test_analysis import K, at, call, make_trace, ret

from branchtrace.model import Gap
from branchtrace.reporters import collapsed, perfetto, speedscope


def sample(**kw):
    # the trace starts inside g (called from f, from main): a lowered baseline
    return make_trace([
        ret(("g", 0x40), ("f", 0x30)),
        call(("f", 0x40), "h"),
        ret(("h", 0x10), ("f", 0x40)),
        ret(("f", 0x60), ("main", 0x10)),
        (K.COND, at("main", 0x20), at("main", 0x40)),
        call(("main", 0x50), "h"),
        (K.COND, at("h", 0x20), at("h", 0x40)),
        ret(("h", 0x10), ("main", 0x50)),
    ], gaps=[Gap(1, 5, 2, "test")], **kw)


def render(module, trace) -> str:
    out = io.StringIO()
    module.render(trace, out)
    return out.getvalue()


def test_perfetto_complete_events_nest_per_thread():
    doc = json.loads(render(perfetto, sample(start=100.0, end=100.008)))
    events = doc["traceEvents"]
    assert {e["ph"] for e in events} == {"M", "X", "i"}
    # written as frames close (callees first), sorted by ts as importers do (stable:
    # of equal ts, the first written is the parent); depths count from the first
    # frame (g), which the trace leaves twice by returns: f and main are below it
    calls = sorted((e for e in events if e["ph"] == "X"), key=lambda e: e["ts"])
    assert [(e["name"], e["args"]["depth"]) for e in calls] == [
        ("main", -2), ("f", -1), ("g", 0), ("h", 0), ("h", -1)]
    stack: list[tuple[float, float]] = []
    for e in calls:                     # parents come first and hold their children
        depth = e["args"]["depth"] + 2
        while stack and e["ts"] >= stack[-1][1] and len(stack) > depth:
            stack.pop()
        assert len(stack) == depth
        if stack:
            assert stack[-1][0] <= e["ts"] and e["ts"] + e["dur"] <= stack[-1][1] + 1e-9
        stack.append((e["ts"], e["ts"] + e["dur"]))
    assert calls[0]["ts"] == 0 and abs(calls[0]["dur"] - 8000.0) < 1e-6   # the whole 8 ms
    assert all(e["pid"] == 1 and e["tid"] == 1 for e in calls)
    gap = next(e for e in events if e["ph"] == "i")
    assert gap["name"] == "[gap: 2 records lost (test)]"


def test_perfetto_without_timestamps_uses_branch_index():
    doc = json.loads(render(perfetto, sample()))
    main = next(e for e in doc["traceEvents"] if e.get("name") == "main")
    assert main["dur"] == 9.0           # 8 branches: from the start to after the tail, 9 us
    assert "one microsecond per branch" in doc["otherData"]["clock"]


def validate_evented(doc) -> None:
    """What speedscope checks on import: open/close pairs on a stack, time not going back."""
    assert doc["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    frames = doc["shared"]["frames"]
    for p in doc["profiles"]:
        assert p["type"] == "evented" and p["unit"] == "microseconds"
        stack: list[int] = []
        last = p["startValue"]
        for e in p["events"]:
            assert 0 <= e["frame"] < len(frames)
            assert e["at"] >= last
            last = e["at"]
            if e["type"] == "O":
                stack.append(e["frame"])
            else:
                assert e["type"] == "C" and stack and stack.pop() == e["frame"]
        assert not stack and last <= p["endValue"]


def test_speedscope_evented_profile():
    doc = json.loads(render(speedscope, sample(start=1.0, end=2.0)))
    validate_evented(doc)
    names = [f["name"] for f in doc["shared"]["frames"]]
    assert sorted(names) == ["f", "g", "h", "main"]
    events = doc["profiles"][0]["events"]
    # streamed: the trace starts in g, which returns at once into f, a caller it had
    # not shown: f opens there (not at 0, which would be an event written back)
    assert [(e["type"], names[e["frame"]], e["at"]) for e in events[:4]] == [
        ("O", "g", 0), ("C", "g", 0), ("O", "f", 0), ("O", "h", 142857.142578125)]
    assert [(e["type"], names[e["frame"]]) for e in events[-4:]] == [
        ("O", "main"), ("O", "h"), ("C", "h"), ("C", "main")]
    assert doc["profiles"][0]["endValue"] == 1e6


def test_collapsed_weights_are_branches():
    text = render(collapsed, sample())
    lines = text.splitlines()
    assert all(re.fullmatch(r"[^ ].* \d+", ln) for ln in lines)
    weights = {ln.rsplit(" ", 1)[0]: int(ln.rsplit(" ", 1)[1]) for ln in lines}
    assert weights == {"main;f;g": 1, "main;f": 2, "main;f;h": 1, "main": 2, "main;h": 2}
    assert sum(weights.values()) == 8
    assert lines == sorted(lines)


def test_collapsed_threads_are_prefixed():
    trace = make_trace([], threads={3: [call(("main", 0x10), "f")],
                                    4: [(K.COND, at("g", 0), at("g", 8))]})
    assert render(collapsed, trace) == "thread 3;main 1\nthread 4;g 1\n"


def tail_calls():
    """main calls f, f tail-calls g (a jump to g's first byte: g takes f's frame), g
    tail-calls h, h returns to main; then main calls f again: f's frames end exactly
    where the next ones start."""
    rows = []
    for _ in range(3):
        rows += [call(("main", 0x10), "f"), (K.JUMP, at("f", 0x20), at("g")),
                 (K.JUMP, at("g", 0x30), at("h")), ret(("h", 0x10), ("main", 0x10)),
                 (K.COND, at("main", 0x20), at("main", 0x8))]
    return rows


def test_perfetto_siblings_and_children_nest_in_floating_point():
    """speedscope's importer (and a browser) read ts and dur as doubles and add them:
    the end of a call must be <= the start of the next sibling and of its parent's end
    exactly, with no tolerance (decimal microseconds failed: 5022.72 + 62.72 =
    5085.4400000000005)."""
    for k in range(200):
        span = 0.000_997 * (k + 1) + 0.000_000_013 * k      # odd nanosecond spans
        doc = json.loads(render(perfetto, make_trace(tail_calls(), start=1_700_000_000.0 + k,
                                                     end=1_700_000_000.0 + k + span)))
        # by ts, as importers sort them (stable: of equal ts, the parent is first)
        calls = sorted((e for e in doc["traceEvents"] if e["ph"] == "X"),
                       key=lambda e: e["ts"])
        assert [e["name"] for e in calls if e["args"]["depth"] == 1] == ["f", "g", "h"] * 3
        stack: list[tuple[float, float]] = []       # (ts, end) of the open parents
        prev_end: dict[int, float] = {}             # depth -> end of the last sibling
        for e in calls:
            depth, ts, end = e["args"]["depth"], e["ts"], e["ts"] + e["dur"]
            del stack[depth:]
            assert ts >= prev_end.get(depth, 0.0), (k, e)        # after its sibling
            if stack:
                assert stack[-1][0] <= ts and end <= stack[-1][1], (k, e)  # inside
            for d in [d for d in prev_end if d > depth]:
                del prev_end[d]
            prev_end[depth] = end
            stack.append((ts, end))
            # the value written is exactly a multiple of 1/1024 us
            assert float(ts * 1024).is_integer() and float(e["dur"] * 1024).is_integer()
