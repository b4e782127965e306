"""The call and instruction history reporters on built traces (no code on disk)."""

from __future__ import annotations

import io

import pytest
from test_analysis import K, at, call, make_trace, ret

from branchtrace.errors import UsageError
from branchtrace.model import Gap
from branchtrace.reporters import history


def calls_text(trace, **kw) -> str:
    out = io.StringIO()
    history.render_calls(trace, out, **kw)
    return out.getvalue()


def sample():
    return make_trace([
        call(("main", 0x10), "f"),
        call(("f", 0x30), "g"),
        ret(("g", 0x40), ("f", 0x30)),
        ret(("f", 0x60), ("main", 0x10)),
        (K.COND, at("main", 0x20), at("main", 0x40)),
        call(("main", 0x50), "h"),
    ], gaps=[Gap(1, 4, 3, "test")])


def test_call_history_lines_numbers_and_indent():
    assert calls_text(sample()) == (
        "1\tmain\n"
        "2\t  f\n"
        "3\t    g\n"
        "4\t  f\n"
        "5\tmain\n"
        "6\t[gap: 3 records lost (test)]\n"
        "7\tmain\n"
        "8\t  h\n")


def test_call_history_last_no_indent_and_instruction_ranges():
    # without the code on disk every run is one instruction: its branch's source
    text = calls_text(sample(), last=3, indent=False, insn_ranges=True, lines=True)
    assert text == ("6\t[gap: 3 records lost (test)]\n"
                    "7\tmain\tinst 5,6\n"
                    "8\th\n")   # h: entered by the last branch, nothing known after it


def test_call_history_threads():
    trace = make_trace([], threads={7: [call(("main", 0x10), "f")], 9: []})
    assert calls_text(trace) == "thread 7:\n1\tmain\n2\t  f\nthread 9:\n"
    assert calls_text(trace, tid=7) == "1\tmain\n2\t  f\n"
    with pytest.raises(UsageError, match="no thread 8 in the trace"):
        calls_text(trace, tid=8)


def test_instruction_history_without_code():
    out = io.StringIO()
    history.render_insns(sample(), out, source=True)
    lines = out.getvalue().splitlines()
    assert lines[0] == "1\t0x0000000000001010 <main+16>:\t(code not readable)"
    assert "[gap: 3 records lost (test)]" in lines
    gap = lines.index("[gap: 3 records lost (test)]")
    assert lines[gap - 1].startswith("4\t") and lines[gap + 1].startswith("5\t")
    assert len(lines) == 7
    out = io.StringIO()
    history.render_insns(sample(), out, last=2)
    # the gap just before instruction 5 is shown with it
    assert [ln.split("\t")[0] for ln in out.getvalue().splitlines()] == [
        "[gap: 3 records lost (test)]", "5", "6"]
