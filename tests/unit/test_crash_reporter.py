"""The crash reporter on a trace built by hand: text layout and JSON content."""

from __future__ import annotations

import io
import json

import numpy as np

from branchtrace.model import BRANCH_DTYPE, BranchKind, ExitInfo, Gap
from branchtrace.reporters import crash
from branchtrace.trace import Trace


def make_trace(n: int = 5, exit: ExitInfo | None = None) -> Trace:
    branches = np.zeros(n, dtype=BRANCH_DTYPE)
    branches["from_ip"] = 0x1000 + np.arange(n) * 0x10
    branches["to_ip"] = 0x2000 + np.arange(n) * 0x10
    branches["kind"] = [BranchKind.CALL, BranchKind.RETURN, BranchKind.COND,
                        BranchKind.INDIRECT_JUMP, BranchKind.INTERRUPT][:n]
    return Trace(
        backend="ptrace", mode="ring", argv=("./prog", "x"), pid=42,
        exit=exit or ExitInfo("signaled", signal=11, fault_address=0x10, fault_pc=0x3000, tid=42),
        modules=[], threads={42: branches, 43: branches[:1]},
        gaps=[Gap(42, 0, 7, "ring buffer overwrote the oldest records")],
        written={42: n + 7, 43: 1}, lost={42: 7, 43: 0}, notes=["a note"],
    )


def test_text_report_layout():
    out = io.StringIO()
    crash.render(make_trace(), out, last=3)
    text = out.getvalue()
    assert text.splitlines()[:3] == [
        "branchtrace: ./prog x (pid 42) was killed by SIGSEGV (Segmentation fault)",
        "  fault address: 0x10",
        "  faulted at:    0x3000 0x3000",
    ]
    assert "  thread 42: 12 branches recorded, 7 older ones lost [ptrace, ring mode]" in text
    assert "Last 3 branches of thread 42, oldest first:" in text
    rows = [ln.split() for ln in text.splitlines() if ln.startswith("    -")]
    assert [r[:2] for r in rows] == [["-3", "cond"], ["-2", "indirect_jump"], ["-1", "interrupt"]]
    assert rows[-1][2:] == ["0x1040", "0x1040", "=>", "0x2040", "0x2040"]
    assert "gap: thread 42 lost 7 records (ring buffer overwrote the oldest records)" in text
    assert "note: a note" in text


def test_json_report_content():
    out = io.StringIO()
    crash.render(make_trace(), out, last=8, fmt="json")
    doc = json.loads(out.getvalue())
    assert doc["exit"]["signal"] == {"number": 11, "name": "SIGSEGV", "description": "Segmentation fault"}
    assert doc["exit"]["fault_address"] == 0x10
    assert doc["thread"] == 42
    assert [b["index"] for b in doc["branches"]] == [-5, -4, -3, -2, -1]
    assert [b["kind"] for b in doc["branches"]] == ["call", "return", "cond", "indirect_jump", "interrupt"]
    first = doc["branches"][0]
    assert first["from"] == {"address": 0x1000, "hex": "0x1000", "function": None, "offset": None,
                             "module": None, "file": None, "line": None}
    assert doc["threads"]["42"] == {"recorded": 5, "written": 12, "lost": 7}


def test_exit_and_detach_headlines():
    out = io.StringIO()
    crash.render(make_trace(exit=ExitInfo("exited", code=3)), out)
    assert out.getvalue().startswith("branchtrace: ./prog x (pid 42) exited with status 3\n")
    out = io.StringIO()
    crash.render(make_trace(exit=ExitInfo("detached")), out)
    assert "detached; it keeps running without us" in out.getvalue().splitlines()[0]


def test_no_threads_recorded():
    trace = make_trace()
    trace.threads = {}
    out = io.StringIO()
    crash.render(trace, out)
    assert "no thread was recorded" in out.getvalue()
