"""`history --last N` reads a block-id trace from its end (history_tail.py): the same
lines as the whole-trace history in memory, numbers and indentation included, on real
recordings cut into many chunks (a loop of calls; a signal handler entered three times;
a longjmp), and the last chunks are really where it starts from."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from branchtrace.analysis import CodeReader, FunctionIndex, stackwalk
from branchtrace.history_tail import call_resumer, insn_resumer
from branchtrace.reporters import history
from branchtrace.tracefile import open_trace, scan, to_trace
from conftest import cli, need_backend

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rechunk import rechunk  # noqa: E402


@pytest.mark.parametrize(("program", "argv", "size"),
                         [("loop", ["3000"], 1000), ("conf_signal_work", [], 50),
                          ("conf_longjmp", [], 20)])
def test_last_lines_from_the_end_are_the_whole_history(build, tmp_path, program, argv, size):
    need_backend("stalker")
    if stackwalk.compiled() is None:
        pytest.skip("reading from the end needs numba (the fast extra)")
    exe = build(program)
    recorded, path = tmp_path / "whole.btrace", tmp_path / "cut.btrace"
    done = cli("run", "--backend", "stalker", "--mode", "stream", "--report", "never",
               "-o", str(recorded), "--", str(exe), *argv, timeout=600)
    assert done.returncode == 0, done.stderr
    assert rechunk(recorded, path, size) > 8
    trace = open_trace(path)
    tf = scan(path)
    view = to_trace(tf, decode=False).per_process()[0]
    tid = view.pid
    for last in (1, 7, 60):
        for options, flags in (({}, []), ({"insn_ranges": True, "lines": True},
                                          ["--insn-ranges", "--lines"])):
            want = io.StringIO()
            history.render_calls(trace.for_pid(tid), want, last=last, **options)
            got = cli("history", str(path), "--pid", str(tid), "--last", str(last), *flags)
            assert got.returncode == 0, got.stderr
            assert got.stdout == want.getvalue(), (last, flags)
        want = io.StringIO()
        history.render_insns(trace.for_pid(tid), want, last=last)
        got = cli("history", str(path), "--pid", str(tid), "--insns", "--last", str(last))
        assert got.stdout == want.getvalue(), last
    # it did start from the end: the walk chose a later chunk than the first
    functions, reader = FunctionIndex(view.symbolizer), CodeReader(view.symbolizer)
    resume = call_resumer(tf, 7)
    assert resume is not None
    start = resume(tid, functions, reader, True)
    assert start is not None and start.calls.n > 0
    insns = insn_resumer(tf, 7)
    assert insns is not None and insns(tid, reader) is not None
