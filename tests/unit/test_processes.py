"""Several processes in one trace: Trace.processes, process_of, for_pid, and files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from branchtrace.errors import UsageError
from branchtrace.model import BRANCH_DTYPE, BranchKind, ExitInfo, Gap, ModuleMap, ProcessInfo
from branchtrace.trace import Trace

PARENT_MODS = (ModuleMap("/bin/sh", 0x5000, 0x9000, 0x5000),)
# the child exec'd another program whose maps cover the same addresses
CHILD_MODS = (ModuleMap("/bin/true", 0x5000, 0x9000, 0x4000),
              ModuleMap("/lib/libc.so.6", 0x7f00_0000, 0x7f10_0000, 0x7f00_0000))


def arr(*pairs: tuple[int, int]) -> np.ndarray:
    out = np.zeros(len(pairs), BRANCH_DTYPE)
    for i, (a, b) in enumerate(pairs):
        out[i] = (a, b, int(BranchKind.CALL))
    return out


def two_processes() -> Trace:
    parent = ProcessInfo(10, 0, ("sh", "-c", "x"), ExitInfo("exited", code=0), PARENT_MODS,
                         (10, 11), 1_000_000_000, 3_000_000_000)
    child = ProcessInfo(20, 10, ("/bin/true",), ExitInfo("signaled", signal=11, fault_pc=0x5010,
                                                          tid=20),
                        CHILD_MODS, (20,), 1_500_000_000, 2_000_000_000)
    return Trace(backend="ptrace", mode="stream", argv=parent.argv, pid=10, exit=parent.exit,
                 modules=list(PARENT_MODS),
                 threads={10: arr((0x5001, 0x5002)), 11: arr((0x5003, 0x5004), (1, 2)),
                          20: arr((0x5005, 0x5006), (3, 4), (5, 6))},
                 gaps=[Gap(11, 0, 3, "ring"), Gap(20, 1, 5, "ring")],
                 written={10: 1, 11: 5, 20: 8}, lost={11: 3, 20: 5},
                 notes=["shared", "pid 20: executed /bin/true", "pid 10: something"],
                 start_time=1.0, end_time=3.0, processes=[parent, child])


def test_one_process_is_built_from_the_old_fields() -> None:
    t = Trace(backend="ptrace", mode="ring", argv=("a",), pid=5, exit=ExitInfo("exited", 0),
              modules=list(PARENT_MODS), threads={5: arr((1, 2)), 6: arr()})
    assert len(t.processes) == 1
    p = t.processes[0]
    assert (p.pid, p.ppid, p.argv, p.threads, p.modules) == (5, 0, ("a",), (5, 6), PARENT_MODS)
    assert t.for_pid(5) is t
    assert t.process_of(6).pid == 5
    assert t.process_of(999).pid == 5     # a thread nobody lists: the first process's


def test_process_of_and_for_pid() -> None:
    t = two_processes()
    assert t.pids == [10, 20]
    assert t.process_of(11).pid == 10 and t.process_of(20).pid == 20
    child = t.for_pid(20)
    assert list(child.threads) == [20] and child.total() == 3
    assert child.exit.signal == 11 and child.argv == ("/bin/true",) and child.pid == 20
    assert [g.tid for g in child.gaps] == [20] and child.lost == {20: 5}
    assert child.notes == ["shared", "pid 20: executed /bin/true"]
    assert child.start_time == 1.0 and child.processes[0].start_ns == 1_500_000_000
    assert [p.pid for p in child.processes] == [20]
    parent = t.for_pid(10)
    assert list(parent.threads) == [10, 11] and parent.total() == 3
    assert parent.notes == ["shared", "pid 10: something"]


def test_each_process_symbolizes_with_its_own_modules() -> None:
    t = two_processes()
    assert t.for_pid(10).symbolizer.describe(0x5010).module == "/bin/sh"
    assert t.for_pid(20).symbolizer.describe(0x5010).module == "/bin/true"


def test_unknown_pid_is_a_one_line_usage_error() -> None:
    with pytest.raises(UsageError, match=r"^no process 7 in this trace \(its processes: 10, 20\)$"):
        two_processes().for_pid(7)


# ---- trace files ---------------------------------------------------------------------

def test_file_round_trip_keeps_the_processes(tmp_path: Path) -> None:
    from branchtrace.tracefile import open_trace, save

    t = two_processes()
    save(t, tmp_path / "t.btrace")
    back = open_trace(tmp_path / "t.btrace")
    assert back.pids == [10, 20]
    assert back.processes[0].exit == ExitInfo("exited", code=0)
    assert back.processes[1] == t.processes[1]
    assert back.processes[0].threads == (10, 11) and back.processes[0].modules == PARENT_MODS
    assert back.modules == list(PARENT_MODS) and back.argv == ("sh", "-c", "x")
    child = back.for_pid(20)
    assert child.total() == 3 and child.symbolizer.describe(0x5010).module == "/bin/true"
    assert back.for_pid(10).total() == 3


def test_a_file_without_process_records_is_one_process(tmp_path: Path) -> None:
    """What every file written before processes were recorded looks like."""
    from branchtrace.tracefile import open_trace, save, scan

    t = Trace(backend="ptrace", mode="ring", argv=("a", "b"), pid=5,
              exit=ExitInfo("exited", code=3), modules=list(PARENT_MODS),
              threads={5: arr((1, 2)), 6: arr((3, 4))})
    save(t, tmp_path / "old.btrace")
    assert scan(tmp_path / "old.btrace").processes == {}
    back = open_trace(tmp_path / "old.btrace")
    assert len(back.processes) == 1
    p = back.processes[0]
    assert (p.pid, p.ppid, p.argv, p.threads, p.exit.code) == (5, 0, ("a", "b"), (5, 6), 3)
    assert back.for_pid(5) is back


def test_old_payloads_without_pid_fields_still_decode() -> None:
    from branchtrace.tracefile.format import ModuleInfo, ThreadInfo

    old_thread = ThreadInfo(7, 1, 2, 3, 4, pid=99).encode()[:-4]
    assert ThreadInfo.decode(old_thread) == ThreadInfo(7, 1, 2, 3, 4, 0)
    old_module = ModuleInfo(1, 2, 3, "/x", "ab", (), pid=99).encode()[:-4]
    assert ModuleInfo.decode(old_module).pid == 0


def test_a_cut_short_file_keeps_the_processes_known_so_far(tmp_path: Path) -> None:
    from branchtrace.tracefile import TraceWriter, open_trace
    from branchtrace.tracefile.format import FileHeader

    t = two_processes()
    path = tmp_path / "cut.btrace"
    from branchtrace.store import FROMTO_DTYPE
    w = TraceWriter.create(path, FileHeader(1, 2, FROMTO_DTYPE.itemsize, 1024, 0, 0, 10**18, "ptrace", "test",
                                            ("sh",)))
    from branchtrace.store import FROMTO_DTYPE
    for tid, branches in t.threads.items():
        raw = np.zeros(len(branches), FROMTO_DTYPE)
        for name in ("from_ip", "to_ip", "kind"):
            raw[name] = branches[name]
        w.write_chunk(tid, raw, 10**18, 10**18 + 1)
    running = ProcessInfo(10, 0, ("sh",), ExitInfo("running"), (), (10, 11))
    w.write_process(running)
    w.write_process(t.processes[1])
    for m in CHILD_MODS:
        w.write_module(m, 20)
    w.close()                                   # no END: cut short
    back = open_trace(path)
    assert back.truncated and back.pids == [10, 20]
    assert back.processes[0].exit.status == "unknown"
    assert back.processes[1].exit.signal == 11
    assert back.for_pid(20).total() == 3 and back.for_pid(10).total() == 3
    assert back.for_pid(20).modules == list(CHILD_MODS)


# ---- coverage over several processes ---------------------------------------------------

def test_coverage_union_adds_up_a_file_loaded_at_different_addresses() -> None:
    from branchtrace.analysis.coverage import BLOCK_DTYPE, EDGE_DTYPE, Coverage
    from branchtrace.analysis.coverage_union import union

    def cov(base: int, blocks: list[tuple[int, int, int]], edges: list[tuple[int, int, int]],
            extra: tuple[ModuleMap, ...] = ()) -> Coverage:
        mods = extra + (ModuleMap("/bin/prog", base, base + 0x1000, base, "ab"),)
        b = np.zeros(len(blocks), BLOCK_DTYPE)
        for i, (s, e, h) in enumerate(blocks):
            b[i] = (base + s, base + e, h, len(extra))
        ed = np.zeros(len(edges), EDGE_DTYPE)
        for i, (f, t, h) in enumerate(edges):
            ed[i] = (base + f, base + t, int(BranchKind.CALL), h, len(extra), len(extra))
        return Coverage(mods, b, ed, branches=5, runs=3, dropped_runs=1, unknown_lengths=0,
                        notes=("n",))

    lib = ModuleMap("/lib/other.so", 0x9000_0000, 0x9000_1000, 0x9000_0000)
    a = cov(0x5000_0000, [(0x10, 0x20, 2)], [(0x1f, 0x40, 2)])
    b = cov(0x7000_0000, [(0x18, 0x30, 3)], [(0x1f, 0x40, 1), (0x2f, 0x10, 4)], (lib,))
    u = union([a, b])
    assert [m.path for m in u.modules] == ["/bin/prog", "/lib/other.so"]
    base = 0x5000_0000          # the first mapping of the file seen
    assert [(int(x["start"]) - base, int(x["end"]) - base, int(x["hits"]), int(x["module"]))
            for x in u.blocks] == [(0x10, 0x18, 2, 0), (0x18, 0x20, 5, 0), (0x20, 0x30, 3, 0)]
    assert [(int(e["from_ip"]) - base, int(e["to_ip"]) - base, int(e["hits"]))
            for e in u.edges] == [(0x1f, 0x40, 3), (0x2f, 0x10, 4)]
    assert (u.branches, u.runs, u.dropped_runs, u.notes) == (10, 6, 2, ("n",))


# ---- crash reports over several processes ----------------------------------------------

def test_a_report_for_every_process_that_died_of_a_signal() -> None:
    import io
    import json

    from branchtrace.reporters.crash import render_all, to_report

    t = two_processes()
    assert [r.pid for r in to_report(t, first=False)] == [20]
    assert [r.pid for r in to_report(t, first=True)] == [10, 20]
    out = io.StringIO()
    render_all(to_report(t, first=True), out, last=2)
    text = out.getvalue()
    assert "branchtrace: sh -c x (pid 10) exited with status 0\n" in text
    assert "branchtrace: /bin/true (pid 20) was killed by SIGSEGV (Segmentation fault)\n" in text
    assert text.index("(pid 10)") < text.index("(pid 20)")
    out = io.StringIO()
    render_all(to_report(t, first=True), out, fmt="json")
    assert [r["pid"] for r in json.loads(out.getvalue())["reports"]] == [10, 20]
    # none died: the first process's report, as for one process
    calm = Trace(backend="ptrace", mode="ring", argv=("a",), pid=5,
                 exit=ExitInfo("exited", code=0), modules=[], threads={5: arr((1, 2))})
    assert [r.pid for r in to_report(calm, first=False)] == [5]
