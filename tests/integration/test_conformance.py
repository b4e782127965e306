"""One suite over every available backend: the same fixture, the same taken branches.

For each fixture we take the branches whose source and target both lie in the main
executable, from the first branch out of ``main`` to ``main``'s return, as offsets in
the file (so ASLR does not matter). Every backend must give exactly the sequence the
ptrace backend (the exact reference) gives, and each fixture's arithmetic must hold.
A backend that cannot run here is skipped with the reason (a failure under
``--require-backend``); no backend is ever compared with itself.
"""

from __future__ import annotations

import os
from collections import Counter
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from conftest import ALL_BACKENDS, need_backend

from branchtrace.backends import Target
from branchtrace.model import BranchKind
from branchtrace.recorder import RecordConfig, record
from branchtrace.trace import Trace

FIXTURES = ["conf_calls", "conf_indirect", "conf_longjmp", "conf_returns", "conf_signal_work",
            "signal", "loop", "crash"]

Seq = list[tuple[str, int, str, int, str]]  # (from function, from offset, to function, to offset, kind)


def main_window(trace: Trace, exe: Path) -> Seq:
    """Branches within the executable, from main's first branch to main's return."""
    b = trace.branches(trace.pid)
    real = os.path.realpath(exe)
    module = next(m for m in trace.modules if os.path.realpath(m.path) == real)
    inside = ((b["from_ip"] >= module.start) & (b["from_ip"] < module.end)
              & (b["to_ip"] >= module.start) & (b["to_ip"] < module.end))
    b = b[inside]
    sym = trace.symbolizer
    src, dst = sym.resolve(b["from_ip"]), sym.resolve(b["to_ip"])
    src_names = np.array(src.function_names + ("?",))[src.function]
    dst_names = np.array(dst.function_names + ("?",))[dst.function]
    in_main = np.flatnonzero(src_names == "main")
    assert len(in_main), "no branch out of main was recorded"
    first = int(in_main[0])
    returns = np.flatnonzero((src_names == "main") & (b["kind"] == BranchKind.RETURN))
    last = int(returns[returns >= first][0]) if len(returns[returns >= first]) else len(b) - 1
    return [
        (str(src_names[i]), int(src.offset[i]), str(dst_names[i]), int(dst.offset[i]),
         BranchKind(int(b["kind"][i])).label)
        for i in range(first, last + 1)
    ]


@lru_cache(maxsize=None)
def _record(backend: str, exe: str) -> Trace:
    return record(Target(argv=(exe,)), RecordConfig(backend=backend, mode="stream"))


def traced(build, backend: str, fixture: str) -> tuple[Trace, Seq]:
    exe = build(fixture)
    trace = _record(backend, str(exe))
    return trace, main_window(trace, exe)


def calls_to(seq: Seq, function: str) -> int:
    return sum(1 for s in seq if s[4] in ("call", "indirect_call") and s[2] == function and s[3] == 0)


def returns_from(seq: Seq, function: str) -> int:
    return sum(1 for s in seq if s[4] == "return" and s[0] == function)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_calls_returns_loops_recursion(build, backend):
    trace, seq = traced(build, backend, "conf_calls")
    assert trace.exit.code == 0
    assert calls_to(seq, "fib") == 25 and returns_from(seq, "fib") == 25
    assert calls_to(seq, "square") == 5 and returns_from(seq, "square") == 5
    loop_backs = [s for s in seq if s[0] == "main" and s[2] == "main" and s[4] == "cond"]
    assert len(loop_backs) == 5  # the loop test at the bottom jumps back 5 times


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_switch_table_and_function_pointers(build, backend):
    trace, seq = traced(build, backend, "conf_indirect")
    assert trace.exit.code == 0
    table_jumps = [s for s in seq if s[0] == "classify" and s[4] == "indirect_jump"]
    # cases 0..6 go through the table, 7 and 8 to default; case 0's code lies right after
    # the jmp, so reaching it is a jump to the fall-through: not a taken branch
    assert len(table_jumps) == 6
    assert len({s[3] for s in table_jumps}) == 6
    pointer_calls = Counter(s[2] for s in seq if s[4] == "indirect_call")
    assert pointer_calls == {"op_add": 3, "op_sub": 3, "op_mul": 3}


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_setjmp_longjmp(build, backend):
    trace, seq = traced(build, backend, "conf_longjmp")
    assert trace.exit.code == 0
    assert calls_to(seq, "inner") == 3
    assert returns_from(seq, "inner") == 0  # longjmp leaves all three without a return
    # the longjmp lands back in main, in libc's __longjmp: an indirect jump out of libc
    b = trace.branches(trace.pid)
    landing = [trace.symbolizer.describe(int(t)).function for t, k in zip(b["to_ip"], b["kind"])
               if k == BranchKind.INDIRECT_JUMP]
    assert "main" in landing


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_signal_handler(build, backend):
    trace, seq = traced(build, backend, "signal")
    assert trace.exit.code == 0
    b = trace.branches(trace.pid)
    into = [trace.symbolizer.describe(int(t)).function for t in b["to_ip"][b["kind"] == BranchKind.INTERRUPT]]
    assert into == ["on_signal"]
    # the handler returns once, into libc's restorer (outside the executable)
    handler_returns = [s for s in main_window_all(trace) if s == ("on_signal", "return")]
    assert len(handler_returns) == 1


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_signal_handler_inside(build, backend):
    """The handler's own branches are recorded: 3 deliveries, each an INTERRUPT into
    on_signal, a loop of 5 with 2 calls to twice(), and a return."""
    trace, seq = traced(build, backend, "conf_signal_work")
    assert trace.exit.code == 0
    b = trace.branches(trace.pid)
    into = [trace.symbolizer.describe(int(t)).function
            for t in b["to_ip"][b["kind"] == BranchKind.INTERRUPT]]
    assert into == ["on_signal"] * 3
    assert calls_to(seq, "twice") == 6 and returns_from(seq, "twice") == 6
    # each delivery returns once (into libc's restorer, outside the executable)
    assert main_window_all(trace).count(("on_signal", "return")) == 3


@pytest.mark.parametrize("fixture", FIXTURES)
def test_ring_records_what_stream_records(build, fixture):
    """Ring mode's default ring (2^16 records) has block-start code of its own when the
    thread's memory is below 2 GiB (emit.c, build_record_low): the same branches as the
    stream mode's code, and nothing lost (each fixture fits in the ring)."""
    need_backend("stalker")
    exe = build(fixture)
    ring = record(Target(argv=(str(exe),)), RecordConfig(backend="stalker", mode="ring"))
    _, stream = traced(build, "stalker", fixture)
    assert sum(ring.lost.values()) == 0
    assert len(stream) >= 2
    assert main_window(ring, exe) == stream


def main_window_all(trace: Trace) -> list[tuple[str, str]]:
    b = trace.branches(trace.pid)
    names = trace.symbolizer.resolve(b["from_ip"])
    fn = np.array(names.function_names + ("?",))[names.function]
    return [(str(f), BranchKind(int(k)).label) for f, k in zip(fn, b["kind"])]


#: the backends compared with the ptrace reference: every other one (never ptrace itself,
#: which would compare a trace with itself)
OTHERS = [b for b in ALL_BACKENDS if b != "ptrace"]


@pytest.mark.parametrize("fixture", FIXTURES)
@pytest.mark.parametrize("backend", OTHERS)
def test_same_sequence_as_ptrace(build, backend, fixture):
    need_backend("ptrace")   # the reference (the backend under test: tests/conftest.py)
    _, reference = traced(build, "ptrace", fixture)
    _, seq = traced(build, backend, fixture)
    assert len(seq) >= 2
    assert seq == reference
