"""Coverage from built branch arrays: blocks, edges, hit counts, and the three reporters.

The code is a small x86-64 program held in memory (no file on disk): ``CodeReader``
reads it from there, so instruction lengths and tails are decoded for real.
"""

from __future__ import annotations

import io
import json
import struct
import time

import numpy as np
import pytest

from branchtrace.analysis.code import CodeReader
from branchtrace.analysis.coverage import BLOCK_DTYPE, EDGE_DTYPE, Coverage, compute
from branchtrace.model import BRANCH_DTYPE, BranchKind, ExitInfo, Gap, ModuleMap
from branchtrace.reporters import coverage_json, drcov, lcov
from branchtrace.symbols import FunctionTable, LineTable, RawSymbol
from branchtrace.trace import Trace

BASE = 0x400000
CODE = 0x401000
# 0x401000 mov eax, 0          0x401005 call 0x401020     0x40100a add eax, 1
# 0x40100d cmp eax, 3          0x401010 jl 0x401005        0x401012 mov edi, eax
# 0x401014 mov eax, 60         0x401019 syscall            ...nops...
# 0x401020 nop                 0x401021 ret
PROGRAM = bytes.fromhex("b800000000e81600000083c00183f8037cf389c7b83c0000000f05")
PROGRAM = PROGRAM + b"\x90" * (0x20 - len(PROGRAM)) + bytes.fromhex("90c3")
MODULE = ModuleMap(path="/nonexistent/prog", start=BASE, end=BASE + 0x2000, bias=0)
CALL, RET, JL, SYSCALL_INSN = CODE + 0x05, CODE + 0x21, CODE + 0x10, CODE + 0x19
FUNC, AFTER_CALL, TAIL_END = CODE + 0x20, CODE + 0x0A, CODE + 0x1B


class MemoryReader(CodeReader):
    """Reads PROGRAM at CODE; nothing else is readable."""

    def __init__(self, trace: Trace) -> None:
        super().__init__(trace.symbolizer)

    def read(self, address: int, n: int, module: int | None = None) -> bytes:
        if CODE <= address < CODE + len(PROGRAM):
            return PROGRAM[address - CODE:address - CODE + n]
        return b""


def branches(*rows: tuple[int, int, BranchKind]) -> np.ndarray:
    out = np.zeros(len(rows), dtype=BRANCH_DTYPE)
    for i, (f, t, k) in enumerate(rows):
        out[i] = (f, t, int(k))
    return out


def make_trace(threads: dict[int, np.ndarray], exit: ExitInfo = ExitInfo("exited", code=0),
               gaps: list[Gap] | None = None, modules: list[ModuleMap] | None = None) -> Trace:
    return Trace(backend="test", mode="stream", argv=("prog",), pid=next(iter(threads)),
                 exit=exit, modules=[MODULE] if modules is None else modules,
                 threads=threads, gaps=gaps or [])


def cover(trace: Trace) -> Coverage:
    return compute(trace, MemoryReader(trace))


def block_list(cov: Coverage) -> list[tuple[int, int, int]]:
    return [(int(b["start"]), int(b["end"]), int(b["hits"])) for b in cov.blocks]


LOOP_3 = [(CALL, FUNC, BranchKind.CALL), (RET, AFTER_CALL, BranchKind.RETURN),
          (JL, CALL, BranchKind.COND)] * 2 + [(CALL, FUNC, BranchKind.CALL),
                                              (RET, AFTER_CALL, BranchKind.RETURN)]


def test_a_loop_gives_its_blocks_edges_and_counts() -> None:
    cov = cover(make_trace({10: branches(*LOOP_3)}))
    # [mov eax, 0] ran before the first branch: a trace cannot show it.
    assert block_list(cov) == [
        (CALL, AFTER_CALL, 3),            # call: the first branch's own insn, then 2 loops
        (AFTER_CALL, CODE + 0x12, 3),     # add, cmp, jl
        (CODE + 0x12, TAIL_END, 1),       # after the last jl fell through: up to syscall
        (FUNC, FUNC + 2, 3),              # nop; ret
    ]
    assert cov.blocks["module"].tolist() == [0, 0, 0, 0]
    edges = [(int(e["from_ip"]), int(e["to_ip"]), BranchKind(int(e["kind"])), int(e["hits"]))
             for e in cov.edges]
    assert edges == [(CALL, FUNC, BranchKind.CALL, 3), (JL, CALL, BranchKind.COND, 2),
                     (RET, AFTER_CALL, BranchKind.RETURN, 3)]
    assert cov.branches == 8 and cov.dropped_runs == 0 and cov.unknown_lengths == 0
    assert cov.runs == 1 + 7 + 1      # first insn, 7 runs between branches, the tail
    assert cov.executed_bytes() == 5 + 8 + 9 + 2
    assert cov.notes == ()


def test_runs_are_cut_into_blocks_at_every_entry() -> None:
    # one run enters at add (0x0a), another in the middle at cmp (0x0d)
    trace = make_trace({1: branches((RET, AFTER_CALL, BranchKind.RETURN),
                                    (JL, CODE + 0x0D, BranchKind.COND),
                                    (JL, CALL, BranchKind.COND))},
                       exit=ExitInfo("detached"))
    assert block_list(cover(trace)) == [
        (AFTER_CALL, CODE + 0x0D, 1), (CODE + 0x0D, CODE + 0x12, 2), (RET, RET + 1, 1)]


def test_the_tail_follows_the_exit_only() -> None:
    seq = branches((RET, AFTER_CALL, BranchKind.RETURN))
    exited = block_list(cover(make_trace({1: seq})))
    assert exited == [(AFTER_CALL, TAIL_END, 1), (RET, RET + 1, 1)]
    # detached: the program went on somewhere, the trace does not say where
    assert block_list(cover(make_trace({1: seq}, ExitInfo("detached")))) == [(RET, RET + 1, 1)]
    # killed by a fault at the mov after the jl: up to it, the faulting insn excluded
    fault = ExitInfo("signaled", signal=11, fault_pc=CODE + 0x12, tid=1)
    assert block_list(cover(make_trace({1: seq}, fault))) == [
        (AFTER_CALL, CODE + 0x12, 1), (RET, RET + 1, 1)]
    # another thread faulted: this one's tail is unknown
    other = ExitInfo("signaled", signal=11, fault_pc=CODE + 0x12, tid=2)
    assert block_list(cover(make_trace({1: seq}, other))) == [(RET, RET + 1, 1)]
    # a killing signal without a fault address (SIGKILL): unknown
    killed = ExitInfo("signaled", signal=9)
    assert block_list(cover(make_trace({1: seq}, killed))) == [(RET, RET + 1, 1)]


def test_a_tail_that_reaches_an_unconditional_branch_is_unknown() -> None:
    # from 0x401000 straight on is the call, which would have been recorded
    seq = branches((RET, CODE, BranchKind.RETURN))
    assert block_list(cover(make_trace({1: seq}))) == [(RET, RET + 1, 1)]


def test_an_interrupted_instruction_has_not_run() -> None:
    seq = branches((RET, AFTER_CALL, BranchKind.RETURN),
                   (CODE + 0x0D, FUNC, BranchKind.INTERRUPT),   # a signal before the cmp
                   (RET, CODE + 0x0D, BranchKind.SYSCALL))      # sigreturn, as recorded
    assert block_list(cover(make_trace({1: seq}))) == [
        (AFTER_CALL, CODE + 0x0D, 1),      # add; the cmp waits for the handler
        (CODE + 0x0D, TAIL_END, 1),        # back from the handler: cmp ... syscall
        (FUNC, RET, 1), (RET, RET + 1, 2)]  # the handler; the first record's own ret
    # a signal as the very first record: its from_ip never ran
    first = cover(make_trace({1: branches((CODE + 0x0D, FUNC, BranchKind.INTERRUPT))},
                             ExitInfo("detached")))
    assert block_list(first) == []


def test_records_lost_in_a_gap_leave_that_run_out() -> None:
    seq = branches(*LOOP_3)
    cov = cover(make_trace({1: seq}, gaps=[Gap(1, 4, 100, "ring")]))
    # the run from branch 3's target (FUNC) to branch 4's source (RET) is unknown,
    # but branch 4's own instruction (the ret) ran
    assert block_list(cov) == [(CALL, AFTER_CALL, 3), (AFTER_CALL, CODE + 0x12, 3),
                               (CODE + 0x12, TAIL_END, 1), (FUNC, RET, 2), (RET, FUNC + 2, 3)]
    # lost records at the very end: the tail is unknown too
    lost_end = cover(make_trace({1: seq}, gaps=[Gap(1, len(seq), 5, "ring")]))
    assert (CODE + 0x12, TAIL_END, 1) not in block_list(lost_end)


def test_impossible_runs_are_dropped_and_counted() -> None:
    # a "run" from the jl back to the call: the end lies before the start
    seq = branches((RET, JL, BranchKind.RETURN), (CALL, FUNC, BranchKind.CALL))
    cov = cover(make_trace({1: seq}, ExitInfo("detached")))
    assert cov.dropped_runs == 1
    assert "left out" in cov.notes[0]
    assert block_list(cov) == [(RET, RET + 1, 1)]


def test_code_outside_every_module_counts_but_is_unmapped() -> None:
    jit = 0x7F0000001000
    seq = branches((RET, jit, BranchKind.RETURN), (jit + 0x10, AFTER_CALL, BranchKind.JUMP))
    cov = cover(make_trace({1: seq}, ExitInfo("detached")))
    assert cov.unknown_lengths == 1          # the jump at jit+0x10 cannot be read
    assert "could not be read" in cov.notes[0]
    assert (jit, jit + 0x11, 1) in block_list(cov)
    assert cov.unmapped_blocks == 1
    assert cov.edges["from_module"].tolist() == [0, -1]
    assert cov.edges["to_module"].tolist() == [-1, 0]


def test_threads_add_up() -> None:
    one = branches(*LOOP_3)
    cov = cover(make_trace({1: one, 2: one.copy()}))
    assert block_list(cov) == [(CALL, AFTER_CALL, 6), (AFTER_CALL, CODE + 0x12, 6),
                               (CODE + 0x12, TAIL_END, 2), (FUNC, FUNC + 2, 6)]
    assert cov.edges["hits"].tolist() == [6, 4, 6]


def test_an_empty_trace_has_no_coverage() -> None:
    cov = cover(make_trace({1: branches()}))
    assert len(cov) == 0 and len(cov.edges) == 0 and cov.branches == 0
    assert cov.blocks.dtype == BLOCK_DTYPE and cov.edges.dtype == EDGE_DTYPE


def test_a_million_branches_take_well_under_a_second_or_two() -> None:
    seq = np.tile(branches(*LOOP_3[:3]), 333_334)[:1_000_000]
    trace = make_trace({1: seq}, ExitInfo("detached"))
    reader = MemoryReader(trace)
    t0 = time.perf_counter()
    cov = compute(trace, reader)
    elapsed = time.perf_counter() - t0
    assert cov.branches == 1_000_000
    assert int(cov.blocks["hits"][0]) == 333_334        # the call block
    assert elapsed < 5.0, elapsed


# -- drcov --------------------------------------------------------------------------------

def read_drcov(data: bytes) -> tuple[list[str], list[tuple[int, int, int]]]:
    """An independent drcov reader: header lines, then (start, size, mod_id) records."""
    lines = []
    pos = 0
    while True:
        end = data.index(b"\n", pos)
        line = data[pos:end].decode()
        lines.append(line)
        pos = end + 1
        if line.startswith("BB Table: "):
            break
    count = int(lines[-1].split()[2])
    records = [struct.unpack_from("<IHH", data, pos + 8 * i) for i in range(count)]
    assert len(data) == pos + 8 * count
    return lines, records


def test_drcov_follows_the_layout_the_tools_read() -> None:
    lib = ModuleMap(path="/lib/libx, 2.so", start=0x7F0000000000, end=0x7F0000010000,
                    bias=0x7F0000000000)
    cov = cover(make_trace({1: branches(*LOOP_3)}, modules=[MODULE, lib]))
    out = io.BytesIO()
    assert drcov.render(cov, out) == 0
    lines, records = read_drcov(out.getvalue())
    assert lines[:4] == ["DRCOV VERSION: 2", "DRCOV FLAVOR: drcov",
                         "Module Table: version 4, count 2",
                         "Columns: id, containing_id, start, end, entry, offset, path"]
    assert lines[4] == ("  0,   0, 0x0000000000400000, 0x0000000000402000, "
                        "0x0000000000000000, 0000000000000000, /nonexistent/prog")
    # ", " separates columns: the path keeps its name but not that separator
    assert lines[5].split(", ")[-1] == "/lib/libx,_2.so" and lines[5].split(", ")[0] == "  1"
    assert lines[6] == "BB Table: 4 bbs"
    assert records == [(CALL - BASE, 5, 0), (AFTER_CALL - BASE, 8, 0),
                       (CODE + 0x12 - BASE, 9, 0), (FUNC - BASE, 2, 0)]


def test_drcov_leaves_out_unmapped_blocks_and_cuts_huge_ones() -> None:
    blocks = np.zeros(2, dtype=BLOCK_DTYPE)
    blocks[0] = (BASE + 0x10, BASE + 0x10 + 70000, 1, 0)
    blocks[1] = (0x9000_0000, 0x9000_0010, 1, -1)
    big = ModuleMap(path="/big", start=BASE, end=BASE + 0x20000, bias=0)
    cov = Coverage(modules=(big,), blocks=blocks, edges=np.zeros(0, dtype=EDGE_DTYPE),
                   branches=0, runs=2, dropped_runs=0, unknown_lengths=0)
    out = io.BytesIO()
    assert drcov.render(cov, out) == 1
    _, records = read_drcov(out.getvalue())
    assert records == [(0x10, 65535, 0), (0x10 + 65535, 70000 - 65535, 0)]


# -- json ---------------------------------------------------------------------------------

def test_json_lists_blocks_and_edges_per_module() -> None:
    jit = 0x7F0000001000
    seq = branches(*LOOP_3[:7], (RET, jit, BranchKind.RETURN))
    cov = cover(make_trace({1: seq}, ExitInfo("detached")))
    out = io.StringIO()
    coverage_json.render(cov, out)
    doc = json.loads(out.getvalue())
    assert doc["format"] == "branchtrace-coverage" and doc["version"] == 1
    (mod,) = doc["modules"]
    assert mod["path"] == "/nonexistent/prog" and mod["start"] == hex(BASE)
    assert mod["blocks"] == [[CALL - BASE, 5, 3], [AFTER_CALL - BASE, 8, 2],
                             [FUNC - BASE, 2, 3]]
    assert mod["edges"] == [[CALL - BASE, 0, FUNC - BASE, "call", 3],
                            [JL - BASE, 0, CALL - BASE, "cond", 2],
                            [RET - BASE, 0, AFTER_CALL - BASE, "return", 2],
                            [RET - BASE, -1, jit, "return", 1]]
    assert doc["unmapped"] == {"blocks": [], "edges": []}
    assert doc["summary"]["blocks"] == 3 and doc["summary"]["branches"] == 8


# -- lcov ---------------------------------------------------------------------------------

def line_table() -> LineTable:
    # prog.c: line 3 at 0x1000-0x1005, 4 at 0x1005-0x100a (and an empty row for 9),
    # 5 at 0x100a-0x1012 and 7 at 0x1020-0x1022; other.c line 1 at 0x1012-0x101b
    rows = [(0x1000, 0, 3), (0x1005, 0, 9), (0x1005, 0, 4), (0x100A, 0, 5), (0x1012, 1, 1),
            (0x101B, -1, 0), (0x1020, 0, 7), (0x1022, -1, 0)]
    return LineTable(np.array([r[0] for r in rows], dtype=np.uint64),
                     np.array([r[1] for r in rows], dtype=np.int32),
                     np.array([r[2] for r in rows], dtype=np.int32),
                     ["/src/prog.c", "/src/other.c"])


def functions() -> FunctionTable:
    return FunctionTable([RawSymbol("main", 0x1000, 0x1b, True, 0x2000),
                          RawSymbol("helper", 0x1020, 2, True, 0x2000)])


def test_lcov_lines_have_the_most_hits_of_their_instructions() -> None:
    cov = cover(make_trace({1: branches(*LOOP_3)}))
    files = lcov.module_lines(line_table(), functions(), cov.module_blocks(0), BASE)
    prog, other = files["/src/prog.c"], files["/src/other.c"]
    # line 3 holds [mov eax, 0] (never seen ran) and line 9 has no bytes at all
    assert prog.lines == {3: 0, 4: 3, 5: 3, 7: 3}
    assert other.lines == {1: 1}
    assert prog.functions == {"main": (3, 0), "helper": (7, 3)}
    assert other.functions == {}


def test_lcov_partial_overlap_counts_the_line() -> None:
    blocks = np.zeros(1, dtype=BLOCK_DTYPE)
    blocks[0] = (BASE + 0x1008, BASE + 0x100C, 4, 0)   # the end of line 4, start of 5
    files = lcov.module_lines(line_table(), None, blocks, BASE)
    assert files["/src/prog.c"].lines == {3: 0, 4: 4, 5: 4, 7: 0}


def test_lcov_record_layout() -> None:
    cov = cover(make_trace({1: branches(*LOOP_3)}))
    files = lcov.module_lines(line_table(), functions(), cov.module_blocks(0), BASE)
    lines = lcov.LineCoverage([files["/src/other.c"], files["/src/prog.c"]], [])
    out = io.StringIO()
    lcov.render(cov, out, test_name="unit", lines=lines)
    assert out.getvalue() == (
        "TN:unit\nSF:/src/other.c\nFNF:0\nFNH:0\nDA:1,1\nLF:1\nLH:1\nend_of_record\n"
        "TN:unit\nSF:/src/prog.c\nFN:3,main\nFN:7,helper\nFNDA:0,main\nFNDA:3,helper\n"
        "FNF:2\nFNH:1\nDA:3,0\nDA:4,3\nDA:5,3\nDA:7,3\nLF:4\nLH:3\nend_of_record\n")


def test_lcov_without_line_tables_says_so() -> None:
    cov = cover(make_trace({1: branches(*LOOP_3)}))
    result = lcov.line_coverage(cov, image_of=lambda module: None)
    assert result.files == [] and result.modules_without_lines == ["/nonexistent/prog"]


@pytest.mark.parametrize("fmt", ["drcov", "json", "lcov"])
def test_reporters_accept_an_empty_coverage(fmt: str) -> None:
    cov = cover(make_trace({1: branches()}))
    if fmt == "drcov":
        out = io.BytesIO()
        drcov.render(cov, out)
        assert read_drcov(out.getvalue())[0][-1] == "BB Table: 0 bbs"
    elif fmt == "json":
        text = io.StringIO()
        coverage_json.render(cov, text)
        assert json.loads(text.getvalue())["summary"]["blocks"] == 0
    else:
        text = io.StringIO()
        lcov.render(cov, text)
        assert text.getvalue() == ""


def test_a_known_start_point_counts_the_code_before_the_first_branch() -> None:
    trace = make_trace({1: branches(*LOOP_3)})
    cov = compute(trace, MemoryReader(trace), first_ips={1: CODE})
    assert block_list(cov)[:2] == [(CODE, CALL, 1), (CALL, AFTER_CALL, 3)]
    # a signal as the first record, with a known start: the code before it ran
    first = make_trace({1: branches((CODE + 0x0D, FUNC, BranchKind.INTERRUPT))},
                       ExitInfo("detached"))
    assert block_list(compute(first, MemoryReader(first), first_ips={1: AFTER_CALL})) == [
        (AFTER_CALL, CODE + 0x0D, 1)]
