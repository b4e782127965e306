"""Line and branch coverage per source file, and what is made of it: lcov's branch
records, the text summary, the path filter, --fail-under, and the inputs of
`branchtrace coverage` (several files, directories).

Built on test_coverage's in-memory program: its one conditional jump, ``jl`` at
0x401010 (file address 0x1010, line 5 of /src/prog.c), closes a loop that runs three
times.
"""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from test_coverage import BASE, CODE, JL, LOOP_3, PROGRAM, branches, cover, functions, \
    line_table, make_trace

from branchtrace.analysis.coverage import BLOCK_DTYPE, EDGE_DTYPE, Coverage
from branchtrace.cli import coverage as cli_coverage
from branchtrace.errors import TraceFormatError, UsageError
from branchtrace.model import BranchKind
from branchtrace.reporters import coverage_text, lcov
from branchtrace.reporters.base import Options
from branchtrace.reporters.lines import BranchSite, LineCoverage, PathFilter, SourceFile, \
    module_lines, prepare_patterns


def read_program(vaddr: int, n: int) -> bytes:
    """The program's bytes at file address ``vaddr`` (the module's bias is BASE)."""
    offset = vaddr + BASE - CODE
    return PROGRAM[max(offset, 0):max(offset + n, 0)] if offset >= 0 else b""


def lines_of(cov: Coverage) -> dict[str, SourceFile]:
    return module_lines(line_table(), functions(), cov.module_blocks(0), BASE,
                        edges=cov.edges, read=read_program)


def blocks(*rows: tuple[int, int, int]) -> np.ndarray:
    out = np.zeros(len(rows), dtype=BLOCK_DTYPE)
    for i, (start, end, hits) in enumerate(rows):
        out[i] = (start, end, hits, 0)
    return out


# -- branches -----------------------------------------------------------------------------

def test_a_conditional_jump_counts_its_taken_and_fall_through_outcomes() -> None:
    cov = cover(make_trace({1: branches(*LOOP_3)}))
    prog = lines_of(cov)["/src/prog.c"]
    # jl ran three times: it jumped back twice and fell through to the exit once
    assert prog.branches == {5: [BranchSite(executed=3, taken=2)]}
    assert prog.branches[5][0].not_taken == 1
    assert (prog.branches_found, prog.branches_hit) == (2, 2)
    assert lines_of(cov)["/src/other.c"].branches == {}


def test_a_jump_that_never_ran_has_no_counts_and_one_that_always_jumped_a_zero() -> None:
    # only the code before the loop ran: the jl never did ('-' in lcov)
    cov = Coverage(modules=cover(make_trace({1: branches()})).modules,
                   blocks=blocks((CODE, CODE + 0x0A, 1)), edges=np.zeros(0, EDGE_DTYPE),
                   branches=0, runs=1, dropped_runs=0, unknown_lengths=0)
    prog = lines_of(cov)["/src/prog.c"]
    assert prog.branches == {5: [BranchSite(0, 0)]} and prog.lines[5] == 0
    assert (prog.branches_found, prog.branches_hit) == (2, 0)
    # the loop body ran 4 times and jl jumped each time: it never fell through
    edges = np.zeros(1, EDGE_DTYPE)
    edges[0] = (JL, CODE + 0x05, BranchKind.COND, 4, 0, 0)
    cov = Coverage(modules=cov.modules, blocks=blocks((CODE + 0x05, CODE + 0x12, 4)),
                   edges=edges, branches=4, runs=4, dropped_runs=0, unknown_lengths=0)
    prog = lines_of(cov)["/src/prog.c"]
    assert prog.branches == {5: [BranchSite(4, 4)]}
    assert (prog.branches[5][0].not_taken, prog.branches_hit) == (0, 1)


def test_a_jump_recorded_more_often_than_its_block_ran_counts_as_run_that_often() -> None:
    # records lost around it: the block holding the jump is not counted, its edge is
    edges = np.zeros(1, EDGE_DTYPE)
    edges[0] = (JL, CODE + 0x05, BranchKind.COND, 2, 0, 0)
    cov = Coverage(modules=cover(make_trace({1: branches()})).modules,
                   blocks=blocks((CODE + 0x05, CODE + 0x0A, 2)), edges=edges, branches=2,
                   runs=2, dropped_runs=0, unknown_lengths=0)
    assert lines_of(cov)["/src/prog.c"].branches == {5: [BranchSite(2, 2)]}


def test_without_code_or_edges_there_are_no_branches() -> None:
    cov = cover(make_trace({1: branches(*LOOP_3)}))
    files = module_lines(line_table(), functions(), cov.module_blocks(0), BASE)
    assert files["/src/prog.c"].branches == {}


def test_lcov_writes_branch_records_between_functions_and_lines() -> None:
    cov = cover(make_trace({1: branches(*LOOP_3)}))
    files = lines_of(cov)
    out = io.StringIO()
    lcov.render(cov, out, test_name="unit",
                lines=LineCoverage([files["/src/other.c"], files["/src/prog.c"]], []))
    assert out.getvalue() == (
        "TN:unit\nSF:/src/other.c\nFNF:0\nFNH:0\nDA:1,1\nLF:1\nLH:1\nend_of_record\n"
        "TN:unit\nSF:/src/prog.c\nFN:3,main\nFN:7,helper\nFNDA:0,main\nFNDA:3,helper\n"
        "FNF:2\nFNH:1\nBRDA:5,0,0,2\nBRDA:5,0,1,1\nBRF:2\nBRH:2\n"
        "DA:3,0\nDA:4,3\nDA:5,3\nDA:7,3\nLF:4\nLH:3\nend_of_record\n")


def test_lcov_branch_records_number_the_jumps_of_a_line_and_mark_unrun_ones() -> None:
    source = SourceFile("/s.c", lines={4: 5, 9: 0},
                        branches={4: [BranchSite(5, 0), BranchSite(5, 5)], 9: [BranchSite(0, 0)]})
    out = io.StringIO()
    lcov.render(Coverage((), blocks(), np.zeros(0, EDGE_DTYPE), 0, 0, 0, 0), out,
                lines=LineCoverage([source], []))
    records = [ln for ln in out.getvalue().splitlines() if ln.startswith("BR")]
    assert records == ["BRDA:4,0,0,0", "BRDA:4,0,1,5", "BRDA:4,1,0,5", "BRDA:4,1,1,0",
                       "BRDA:9,0,0,-", "BRDA:9,0,1,-", "BRF:6", "BRH:2"]


# -- which files ---------------------------------------------------------------------------

def test_the_path_filter_includes_then_omits_with_fnmatch_over_whole_paths() -> None:
    assert PathFilter()("/anything.c")
    keep = PathFilter(include=("/src/*",), omit=("*/gen/*", "*.h"))
    assert keep("/src/a.c") and keep("/src/deep/b.c")       # '*' crosses '/'
    assert not keep("/usr/include/stdio.h") and not keep("/src/x.h")
    assert not keep("/src/gen/parse.c")
    assert PathFilter(omit=("/usr/*",))("/src/a.c")
    assert not PathFilter(include=("/src/A.c",))("/src/a.c")   # case counts


def test_patterns_are_split_at_commas_and_made_absolute_as_coverage_py_does() -> None:
    assert prepare_patterns(["src/*,*/test_*", " /usr/* ", ""], "/home/me") == (
        "/home/me/src/*", "*/test_*", "/usr/*")


def test_module_lines_leaves_out_files_the_filter_refuses() -> None:
    cov = cover(make_trace({1: branches(*LOOP_3)}))
    asked: list[str] = []

    def keep(path: str) -> bool:
        asked.append(path)
        return path != "/src/prog.c"

    files = module_lines(line_table(), functions(), cov.module_blocks(0), BASE, keep=keep,
                         edges=cov.edges, read=read_program)
    assert list(files) == ["/src/other.c"] and sorted(asked) == ["/src/other.c", "/src/prog.c"]


# -- the text summary ----------------------------------------------------------------------

def summary(*files: SourceFile, show_missing: bool = False) -> list[str]:
    out = io.StringIO()
    coverage_text.render(LineCoverage(list(files), []), out, show_missing=show_missing)
    return out.getvalue().splitlines()


def test_the_text_summary_has_a_row_per_file_and_a_total() -> None:
    a = SourceFile("/src/a.c", lines={1: 1, 2: 0, 3: 4, 4: 0})
    b = SourceFile("/src/long_name.c", lines={7: 2})
    assert summary(a, b) == [
        "Name               Lines    Miss   Cover",
        "----------------------------------------",
        "/src/a.c               4       2   50.0%",
        "/src/long_name.c       1       0  100.0%",
        "----------------------------------------",
        "TOTAL                  5       2   60.0%",
    ]


def test_show_missing_lists_ranges_over_the_lines_with_code() -> None:
    # 3-5: 4 has no code, so 3 and 5 are consecutive lines with code; 9 ran
    a = SourceFile("/a.c", lines={1: 0, 3: 0, 5: 0, 9: 1, 10: 0, 12: 2, 14: 0, 15: 0})
    rows = summary(a, show_missing=True)
    assert rows[0].split() == ["Name", "Lines", "Miss", "Cover", "Missing"]
    assert rows[2].endswith("25.0%  1-5, 10, 14-15")
    assert rows[-1].rstrip().endswith("25.0%")
    assert coverage_text.missing_ranges(SourceFile("/b.c", lines={2: 3})) == ""


def test_percentages_are_never_rounded_to_all_or_nothing() -> None:
    assert coverage_text.cover_percent(9999, 10000) == "99.9"
    assert coverage_text.cover_percent(1, 10000) == "0.1"
    assert coverage_text.cover_percent(10000, 10000) == "100.0"
    assert coverage_text.cover_percent(0, 10) == "0.0"
    assert coverage_text.cover_percent(0, 0) == "-"


def test_an_empty_summary_still_has_its_total() -> None:
    assert summary()[-1].split() == ["TOTAL", "0", "0", "-"]


# -- the command's inputs and --fail-under -------------------------------------------------

def test_a_directory_means_its_trace_files_sorted_each_file_read_once(tmp_path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    from branchtrace.tracefile.format import MAGIC    # files that begin as traces do
    for name in ("b.btrace", "a.btrace", "notes.txt"):
        (runs / name).write_bytes(MAGIC)
    (runs / "sub.btrace").mkdir()
    other = tmp_path / "c.btrace"
    other.write_bytes(MAGIC)
    paths, warnings = cli_coverage.input_files([str(other), str(runs), str(runs / "a.btrace")])
    assert paths == [str(other), str(runs / "a.btrace"), str(runs / "b.btrace")]
    assert warnings == [f"{runs / 'a.btrace'} is given more than once: read once"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match=r"no trace file \(\*\.btrace\)"):
        cli_coverage.input_files([str(other), str(empty)])
    with pytest.raises(TraceFormatError, match="nope.btrace: no such file"):
        cli_coverage.input_files([str(other), str(tmp_path / "nope.btrace")])


def test_fail_under_compares_the_total_as_the_summary_shows_it(capsys) -> None:
    cov = cover(make_trace({1: branches(*LOOP_3)}))
    # no line tables for /nonexistent/prog: nothing to measure
    assert cli_coverage.fail_under(cov, Options(), 0) == 0
    assert cli_coverage.fail_under(cov, Options(), 50) == 2
    assert "no source lines to measure" in capsys.readouterr().err


def test_percentages_outside_0_to_100_are_refused() -> None:
    assert cli_coverage.percentage("87.5") == 87.5
    for bad in ("-1", "100.5", "nan", "half"):
        with pytest.raises(Exception, match="percentage"):
            cli_coverage.percentage(bad)
    assert os.sep == "/"
