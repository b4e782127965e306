"""The statistics reporter on a built trace."""

from __future__ import annotations

import io
import json

from test_analysis import K, at, call, make_trace, ret

from branchtrace.model import Gap
from branchtrace.reporters import stats


def sample():
    return make_trace([], threads={
        1: [call(("main", 0x10), "f"), (K.COND, at("f", 8), at("f", 0x20)),
            (K.COND, at("f", 8), at("f", 0x20)), ret(("f", 0x60), ("main", 0x10))],
        2: [(K.COND, at("g", 8), at("g", 0x20))],
    }, gaps=[Gap(2, 0, 5, "ring buffer overwrote the oldest records")], start=10.0, end=12.0)


def test_build():
    doc = stats.build(sample(), top=2)
    assert doc["records"] == 5 and doc["lost"] == 5 and doc["duration"] == 2.0
    assert doc["threads"] == [{"tid": 1, "records": 4, "lost": 0, "gaps": 0},
                              {"tid": 2, "records": 1, "lost": 5, "gaps": 1}]
    assert doc["kinds"] == {"call": 1, "return": 1, "cond": 3}
    assert [(f["name"], f["branches"], f["calls"]) for f in doc["functions"]] == [
        ("f", 3, 1), ("main", 1, 0)]   # ties: lower address first
    assert (doc["edges"][0]["count"], doc["edges"][0]["from_symbol"]) == (2, "f+0x8 (prog)")
    assert len(doc["edges"]) == 2
    assert stats.build(sample(), tid=2)["records"] == 1


def test_text_and_json():
    out = io.StringIO()
    stats.render(sample(), out)
    text = out.getvalue()
    for words in ("records:   5 branches in 2 thread(s)", "lost:      5",
                  "duration:  2.000000 s", "branches by kind:", "cond                     3",
                  "hottest functions", "hottest edges", "f+0x8 (prog) => f+0x20 (prog)"):
        assert words in text, words
    out = io.StringIO()
    stats.render(sample(), out, fmt="json")
    assert json.loads(out.getvalue())["records"] == 5


def test_runs_add_up():
    one = stats.run_part("a", "a.btrace", sample(), top=2)
    two = stats.run_part("b", "b.btrace", sample(), top=2)
    doc = stats.build_runs([one, two], top=2)
    single = stats.build(sample(), top=2)
    assert doc["records"] == 2 * single["records"] and doc["lost"] == 2 * single["lost"]
    assert doc["kinds"] == {k: 2 * n for k, n in single["kinds"].items()}
    assert [(f["name"], f["branches"], f["calls"]) for f in doc["functions"]] == [
        ("f", 6, 2), ("g", 2, 0)]      # ties merged by name
    assert doc["edges"][0]["count"] == 4 and len(doc["edges"]) == 2
    assert doc["duration"] == 4.0
    assert [(r["run"], r["records"]) for r in doc["runs"]] == [("a", 5), ("b", 5)]
    assert [(p["run"], p["branches"]) for p in doc["processes"]] == [("a", 5), ("b", 5)]
    assert [(t["run"], t["tid"]) for t in doc["threads"]] == [("a", 1), ("a", 2), ("b", 1),
                                                             ("b", 2)]
    out = io.StringIO()
    stats.write_doc(doc, out)
    text = out.getvalue()
    for words in ("runs:      2 trace files", "a.btrace", "processes: 2",
                  "records:   10 branches in 4 thread(s) of 2 process(es) in 2 runs",
                  "(run b, pid"):
        assert words in text, words
