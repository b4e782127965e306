"""Exact branch counts that arithmetic predicts, recorded by single-stepping."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from branchtrace.backends import Target
from branchtrace.model import BranchKind
from branchtrace.recorder import RecordConfig, record
from branchtrace.trace import Trace


def kinds_inside(trace: Trace, tid: int, function: str) -> Counter[str]:
    """Branch kinds whose source instruction lies in ``function``."""
    branches = trace.branches(tid)
    found = trace.symbolizer.resolve(branches["from_ip"])
    names = np.array(found.function_names + ("",))[found.function]
    return Counter(BranchKind(int(k)).label for k in branches["kind"][names == function])


def expected_work(n: int) -> Counter[str]:
    # work(i) at -O0: the je is taken for even i, the jmp over the else for odd i, one ret each
    return Counter({"cond": (n + 1) // 2, "jump": n // 2, "return": n})


@pytest.mark.parametrize("mode", ["ring", "stream"])
@pytest.mark.parametrize("n", [1000, 333])
def test_loop_counts_are_exact(build, mode, n):
    exe = build("loop")
    trace = record(Target(argv=(str(exe), str(n))), RecordConfig(backend="ptrace", mode=mode))
    assert trace.exit.status == "exited" and trace.exit.code == 0
    assert list(trace.threads) == [trace.pid]
    assert kinds_inside(trace, trace.pid, "work") == expected_work(n)
    assert trace.lost == {trace.pid: 0} and trace.gaps == []
    assert trace.written[trace.pid] == len(trace.branches(trace.pid))
    # every call into work comes from main, every return from work goes back to main
    b = trace.branches(trace.pid)
    to = trace.symbolizer.resolve(b["to_ip"])
    to_names = np.array(to.function_names + ("",))[to.function]
    calls_to_work = (b["kind"] == BranchKind.CALL) & (to_names == "work") & (to.offset == 0)
    assert int(calls_to_work.sum()) == n


def test_ring_keeps_exactly_the_newest_n(build):
    exe = build("loop")
    target = Target(argv=(str(exe), "200"), disable_aslr=True)
    full = record(target, RecordConfig(backend="ptrace", mode="stream"))
    total = len(full.branches(full.pid))
    assert total > 1000
    ring = record(target, RecordConfig(backend="ptrace", mode="ring", buffer="500"))
    kept = ring.branches(ring.pid)
    assert len(kept) == 500
    assert ring.written[ring.pid] == total
    assert ring.lost[ring.pid] == total - 500
    assert [(g.count, g.index) for g in ring.gaps] == [(total - 500, 0)]
    # same program, same addresses (no ASLR): the ring holds the stream's last 500
    assert np.array_equal(kept, full.branches(full.pid)[-500:])


def test_threads_each_record_their_own_work(build):
    exe = build("threads")
    trace = record(Target(argv=(str(exe),)), RecordConfig(backend="ptrace", mode="stream"))
    assert trace.exit.code == 0
    assert len(trace.threads) == 5
    workers = [tid for tid in trace.threads if tid != trace.pid]
    got = sorted(kinds_inside(trace, tid, "work")["return"] for tid in workers)
    assert got == [50, 100, 150, 200]
    for tid in workers:
        counts = kinds_inside(trace, tid, "work")
        assert counts == expected_work(counts["return"])
    assert kinds_inside(trace, trace.pid, "work") == Counter()


def test_signal_handler_is_an_interrupt_and_sigreturn_comes_back(build):
    exe = build("signal")
    trace = record(Target(argv=(str(exe),)), RecordConfig(backend="ptrace"))
    assert trace.exit.code == 0  # the handler ran exactly once, as untraced
    b = trace.branches(trace.pid)
    interrupts = np.flatnonzero(b["kind"] == BranchKind.INTERRUPT)
    assert len(interrupts) == 1
    i = int(interrupts[0])
    assert trace.symbolizer.describe(int(b["to_ip"][i])).function == "on_signal"
    # the handler returns into the restorer, whose rt_sigreturn goes back to the signal point
    after = b[i + 1:]
    back = np.flatnonzero((after["kind"] == BranchKind.SYSCALL) & (after["to_ip"] == b["from_ip"][i]))
    assert len(back) == 1
    ret = after[: int(back[0])]
    assert BranchKind.RETURN in ret["kind"]


def test_start_entry_records_the_dynamic_loader(build):
    exe = build("loop")
    trace = record(Target(argv=(str(exe), "1")), RecordConfig(backend="ptrace", start="entry"))
    first = trace.symbolizer.describe(int(trace.branches(trace.pid)["from_ip"][0]))
    assert first.module is not None and "ld-linux" in first.module
    # libc is mapped after the exec: the maps snapshot at the exit event must have it
    assert any("libc.so" in m.path for m in trace.modules)
    from_main = record(Target(argv=(str(exe), "1")), RecordConfig(backend="ptrace"))
    assert len(trace.branches(trace.pid)) > len(from_main.branches(from_main.pid)) + 1000
    start = from_main.symbolizer.describe(int(from_main.branches(from_main.pid)["from_ip"][0]))
    assert start.function == "main"
