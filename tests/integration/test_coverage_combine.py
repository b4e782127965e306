"""`branchtrace coverage` over a test suite: several runs combined, branch records checked
against gcov's branch counts and genhtml --branch-coverage, the text summary,
--include/--omit, --fail-under, and one-line errors for bad inputs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_coverage_tools import one_line_error

from branchtrace import RecordConfig, Target, record
from branchtrace.analysis.coverage import compute
from branchtrace.cli import main as cli_main
from branchtrace.reporters import lcov
from conftest import FIXTURES, cli

LINES = FIXTURES / "cov_lines.c"
BRANCHES = FIXTURES / "cov_branches.c"


def need_genhtml() -> None:
    if shutil.which("genhtml") is None:
        pytest.fail("genhtml is not installed (Debian: apt-get install lcov)")


@pytest.fixture(scope="module")
def runs(build, tmp_path_factory):
    """cov_lines recorded twice from main, taking different paths (no argument, then
    `x`), as two trace files in one directory."""
    exe = build("cov_lines")
    runs = tmp_path_factory.mktemp("runs")
    for name, args in (("plain", ()), ("with_x", ("x",))):
        result = cli("run", "--backend", "ptrace", "-o",
                     str(runs / f"{name}.btrace"), "--", str(exe), *args)
        assert result.returncode == 0, result.stderr
    return exe, runs


@pytest.fixture
def bt(capsys):
    """`branchtrace ARGS` in this process (line tables are read once for all the calls):
    its exit code, stdout and stderr."""
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        capsys.readouterr()
        try:
            code = cli_main(list(args))
        except SystemExit as stop:          # argparse's errors
            code = int(stop.code or 0)
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)
    return run


@pytest.fixture
def coverage_of(bt):
    """`branchtrace coverage ARGS` in this process, which must succeed."""
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        result = bt("coverage", *args)
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
        return result
    return run


def exe_hits(doc: dict, exe: Path) -> dict[int, int]:
    """Offset -> hits for every byte of the program's executed blocks (json format)."""
    (module,) = [m for m in doc["modules"] if m["path"] == str(exe)]
    return {offset: hits for start, size, hits in module["blocks"]
            for offset in range(start, start + size)}


def da_lines(info: str, source: Path) -> dict[int, int]:
    record = info.split(f"SF:{source}\n", 1)[1].split("end_of_record", 1)[0]
    return {int(m[1]): int(m[2]) for m in re.finditer(r"^DA:(\d+),(\d+)$", record, re.M)}


# -- several runs combined ------------------------------------------------------------------

def test_combined_coverage_of_two_runs_is_their_union_with_hits_added(runs, tmp_path,
                                                                    coverage_of):
    exe, folder = runs
    a, b = folder / "plain.btrace", folder / "with_x.btrace"
    docs = {}
    for name, inputs in (("a", [a]), ("b", [b]), ("ab", [a, b])):
        out = tmp_path / f"{name}.json"
        coverage_of(*map(str, inputs), "--format", "json", "-o", str(out))
        docs[name] = json.loads(out.read_text())
    # the command itself, in a process of its own
    result = cli("coverage", str(folder), "--format", "json", "-o", str(tmp_path / "dir.json"))
    assert result.returncode == 0, result.stderr
    docs["dir"] = json.loads((tmp_path / "dir.json").read_text())
    assert docs["dir"] == docs["ab"]        # a directory is its *.btrace files, sorted
    ha, hb, hab = (exe_hits(docs[k], exe) for k in ("a", "b", "ab"))
    # every byte of the program that ran in either run, its hits added up
    assert set(hab) == set(ha) | set(hb) and set(ha) != set(hb)
    assert hab == {offset: ha.get(offset, 0) + hb.get(offset, 0) for offset in hab}
    assert docs["ab"]["summary"]["branches"] == \
        docs["a"]["summary"]["branches"] + docs["b"]["summary"]["branches"]

    # the source lines: ran in the union exactly when they ran in one of the runs
    infos = {}
    for name, inputs in (("a", [a]), ("b", [b]), ("ab", [a, b])):
        infos[name] = da_lines(coverage_of(*map(str, inputs), "--format", "lcov",
                                           "-o", "-").stdout, LINES)
    ran = {k: {ln for ln, hits in v.items() if hits} for k, v in infos.items()}
    assert ran["ab"] == ran["a"] | ran["b"] and ran["a"] < ran["ab"] and ran["b"] < ran["ab"]
    assert all(max(infos["a"][ln], infos["b"][ln]) <= hits <= infos["a"][ln] + infos["b"][ln]
               for ln, hits in infos["ab"].items())
    # the `x` run takes main's NEVER lines and never_called; area's case 2 and default and
    # main's `return 3` stay unrun
    text = LINES.read_text().splitlines()
    never = {i for i, line in enumerate(text, 1) if "NEVER" in line}
    assert {ln for ln in never if infos["ab"][ln] == 0} == {
        ln for ln in never if re.search(r"return (0|-1|3);", text[ln - 1])}
    assert {ln for ln in never if infos["b"][ln]} == {
        ln for ln in never if re.search(r"y = x|never_called\(|printf", text[ln - 1])}


def test_text_summary_include_omit_and_show_missing(runs, bt, coverage_of, monkeypatch):
    _, folder = runs
    everything = coverage_of(str(folder), "--format", "text").stdout   # stdout by default
    assert "/usr/" in everything and str(LINES) in everything
    mine = coverage_of(str(folder), "--format", "text", "--omit", "/usr/*",
                       "--show-missing").stdout.splitlines()
    assert mine[0].split() == ["Name", "Lines", "Miss", "Cover", "Missing"]
    (row,) = [r for r in mine if r.startswith(str(LINES))]
    info = da_lines(coverage_of(str(folder), "--format", "lcov", "-o", "-").stdout, LINES)
    missed = sorted(ln for ln, hits in info.items() if hits == 0)
    name, lines, miss, cover, *missing = row.split(None, 4)
    assert (int(lines), int(miss)) == (len(info), len(missed))
    assert cover == f"{100 * (len(info) - len(missed)) / len(info):.1f}%"
    # the missed lines, as ranges over the lines with code
    listed = [ln for part in missing[0].split(", ")
              for lo, _, hi in [part.partition("-")] for ln in range(int(lo), int(hi or lo) + 1)
              if ln in info]
    assert listed == missed
    assert mine[-1].split()[:3] == ["TOTAL", lines, miss]
    # --include keeps only what matches; a relative pattern is relative to the cwd
    monkeypatch.chdir(FIXTURES.parent)
    only = coverage_of(str(folder), "--format", "text", "--include", "fixtures/cov_*.c")
    names = [r.split()[0] for r in only.stdout.splitlines()[2:-2]]
    assert names == [str(LINES)]
    # lcov obeys the same filter
    info_text = coverage_of(str(folder), "--format", "lcov", "-o", "-", "--omit",
                            f"{FIXTURES}/*,/usr/lib/*").stdout
    assert str(LINES) not in info_text and "/usr/lib/" not in info_text
    nothing = bt("coverage", str(folder), "--format", "text", "--include", "/nowhere/*")
    assert nothing.returncode == 0 and nothing.stdout.splitlines()[-1].split()[-1] == "-"
    assert "--include/--omit left out all" in nothing.stderr


def test_fail_under_exits_2_after_writing_the_report(runs, tmp_path, bt, coverage_of):
    _, folder = runs
    keep = ["--include", f"{FIXTURES}/*"]
    total = coverage_of(str(folder), "--format", "text", *keep).stdout.splitlines()[-1]
    pct = float(total.split()[-1].rstrip("%"))
    assert 80 < pct < 100
    assert bt("coverage", str(folder), "--format", "text", *keep,
               "--fail-under", str(pct)).returncode == 0
    out = tmp_path / "cov.info"
    failed = bt("coverage", str(folder), "--format", "lcov", "-o", str(out), *keep,
                 "--fail-under", str(pct + 0.1))
    line = one_line_error(failed, 2)
    lines, miss = int(total.split()[1]), int(total.split()[2])
    assert line == (f"branchtrace: coverage failure: total line coverage {pct}% "
                    f"({lines - miss} of {lines} lines) is less than --fail-under={pct + 0.1:g}")
    assert out.read_text().endswith("end_of_record\n")       # the report was written
    assert bt("coverage", str(folder), "--format", "json", "-o", str(tmp_path / "c.json"),
               *keep, "--fail-under", "100").returncode == 2
    assert "percentage" in one_line_error(
        bt("coverage", str(folder), "--format", "text", "--fail-under", "101"), 2)


def test_bad_inputs_are_one_line_errors_naming_them(runs, tmp_path, bt, coverage_of):
    _, folder = runs
    good = str(folder / "plain.btrace")
    nope = tmp_path / "nope.btrace"
    assert one_line_error(bt("coverage", good, str(nope), "--format", "text"), 6) == \
        f"branchtrace: error: {nope}: no such file"
    junk = tmp_path / "junk.btrace"
    junk.write_text("not a trace\n")
    assert str(junk) in one_line_error(bt("coverage", good, str(junk), "--format", "text"), 6)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"{empty}: a directory with no trace file (*.btrace) in it" in one_line_error(
        bt("coverage", good, str(empty), "--format", "text"), 2)
    assert "is the trace file being read" in one_line_error(
        bt("coverage", str(folder), "--format", "json", "-o", good), 2)
    assert "one FILE" in one_line_error(
        bt("coverage", str(folder), "--format", "text", "--pid", "1"), 2)
    assert "-o" in one_line_error(bt("coverage", good, "--format", "lcov"), 2)
    twice = bt("coverage", good, good, "--format", "text")
    assert twice.returncode == 0
    assert f"branchtrace: warning: {good} is given more than once: read once" in twice.stderr
    assert twice.stdout == coverage_of(good, "--format", "text").stdout


# -- branches against gcov ------------------------------------------------------------------

def gcov_branches(source: Path, tmp_path: Path, *args: str) -> dict[int, tuple[int, list]]:
    """line -> (its count, its branch arcs as [(count, fallthrough)]) from gcov -b for
    ``source`` built with --coverage and run with ``args``."""
    exe = tmp_path / "prog"
    subprocess.run(["gcc", "-g", "-O0", "--coverage", "-o", str(exe), str(source)],
                   check=True, capture_output=True)
    subprocess.run([str(exe), *args], check=True, capture_output=True, cwd=tmp_path)
    out = subprocess.run(["gcov", "-b", "--stdout", "--json-format", f"prog-{source.stem}.gcda"],
                         check=True, capture_output=True, text=True, cwd=tmp_path).stdout
    (doc,) = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    (entry,) = [f for f in doc["files"] if Path(f["file"]).name == source.name]
    return {ln["line_number"]: (ln["count"], [(b["count"], b["fallthrough"])
                                              for b in ln["branches"]])
            for ln in entry["lines"]}


def ours(build, source: Path, *args: str) -> lcov.SourceFile:
    exe = build(source.stem)
    trace = record(Target(argv=(str(exe), *args)), RecordConfig(backend="ptrace", start="main"))
    assert trace.exit.status == "exited" and trace.exit.code == 0
    (mine,) = [f for f in lcov.line_coverage(compute(trace)).files if f.path == str(source)]
    return mine


@pytest.mark.parametrize("args", [(), ("a", "b", "c")])
def test_branch_counts_are_gcovs_on_conditions_that_compile_to_one_jump(build, tmp_path, args):
    """At -O0 gcc compiles each condition to one conditional jump, and lays out gcov's
    fall-through arc as the jump's fall-through: per line, gcov's arcs in pairs
    (fall-through, jump) are our jumps' (not taken, taken), in the same order."""
    theirs = gcov_branches(BRANCHES, tmp_path, *args)
    mine = ours(build, BRANCHES, *args)
    with_branches = {ln for ln, (_, arcs) in theirs.items() if arcs}
    assert set(mine.branches) == with_branches and len(with_branches) >= 10
    for ln, sites in mine.branches.items():
        count, arcs = theirs[ln]
        assert len(arcs) == 2 * len(sites), ln
        pairs = [dict((fallthrough, n) for n, fallthrough in arcs[i:i + 2])
                 for i in range(0, len(arcs), 2)]
        assert [(p[True], p[False]) for p in pairs] == \
            [(s.not_taken, s.taken) for s in sites], ln
        # a jump on a line that never ran has no counts (lcov's '-'), gcov's arcs are 0
        assert all((s.executed == 0) == (count == 0) for s in sites), ln
    never = [i for i, text in enumerate(BRANCHES.read_text().splitlines(), 1)
             if "if (v > 10)" in text]
    assert [s.executed for s in mine.branches[never[0]]] == [0]
    # both outcomes of `x > 0 && y > 0` and of the loops happened
    assert mine.branches_hit > mine.branches_found // 2


def test_branch_counts_match_gcov_except_for_the_switch(build, tmp_path):
    """cov_lines' switch is one 4-way branch for gcov and a chain of compare-and-jumps
    for us: every other line agrees as on cov_branches."""
    theirs = gcov_branches(LINES, tmp_path)
    mine = ours(build, LINES)
    switch = next(i for i, t in enumerate(LINES.read_text().splitlines(), 1) if "switch (" in t)
    assert len(theirs[switch][1]) == 4 and len(mine.branches[switch]) == 4   # 4 and 8 outcomes
    assert set(mine.branches) == {ln for ln, (_, arcs) in theirs.items() if arcs}
    for ln, sites in mine.branches.items():
        if ln == switch:
            continue
        arcs = theirs[ln][1]
        pairs = [dict((ft, n) for n, ft in arcs[i:i + 2]) for i in range(0, len(arcs), 2)]
        assert [(p[True], p[False]) for p in pairs] == \
            [(s.not_taken, s.taken) for s in sites], ln


def test_genhtml_branch_coverage_reads_our_branch_records(runs, tmp_path, coverage_of):
    need_genhtml()
    _, folder = runs
    info = tmp_path / "cov.info"
    coverage_of(str(folder), "--format", "lcov", "-o", str(info), "--omit", "/usr/*")
    text = info.read_text()
    assert "BRDA:" in text and "BRDA:" in text.split(f"SF:{LINES}\n")[1]
    result = subprocess.run(["genhtml", "--branch-coverage", "-o", str(tmp_path / "html"),
                             str(info)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr + result.stdout
    summary = re.search(r"branches\.+: [\d.]+% \((\d+) of (\d+) branches\)", result.stdout)
    assert summary is not None, result.stdout
    found = sum(int(n) for n in re.findall(r"^BRF:(\d+)$", text, re.M))
    hit = sum(int(n) for n in re.findall(r"^BRH:(\d+)$", text, re.M))
    assert (int(summary[1]), int(summary[2])) == (hit, found) and 0 < hit < found
    page = next((tmp_path / "html").rglob("cov_lines.c.gcov.html")).read_text()
    assert "Branch data" in page
    # genhtml's headline agrees with the text summary once the headers are omitted
    lines = re.search(r"lines\.+: ([\d.]+)%", result.stdout)
    assert lines is not None
    total = coverage_of(str(folder), "--format", "text", "--omit", "/usr/*").stdout
    assert total.splitlines()[-1].split()[-1] == f"{lines[1]}%"


def test_genhtml_shows_a_jump_that_never_ran_as_not_executed(build, tmp_path):
    need_genhtml()
    from branchtrace.reporters.lines import PathFilter

    exe = build(BRANCHES.stem)
    trace = record(Target(argv=(str(exe),)), RecordConfig(backend="ptrace", start="main"))
    cov = compute(trace)
    lines = lcov.line_coverage(cov, paths=PathFilter(include=(str(BRANCHES),)))
    assert [f.path for f in lines.files] == [str(BRANCHES)]
    info = tmp_path / "b.info"
    with open(info, "w", encoding="utf-8") as f:
        lcov.render(cov, f, lines=lines)
    never = next(i for i, t in enumerate(BRANCHES.read_text().splitlines(), 1)
                 if "if (v > 10)" in t)
    assert f"BRDA:{never},0,0,-\nBRDA:{never},0,1,-\n" in info.read_text()
    result = subprocess.run(["genhtml", "--branch-coverage", "-o", str(tmp_path / "html"),
                             str(info)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr + result.stdout
    page = next((tmp_path / "html").rglob("cov_branches.c.gcov.html")).read_text()
    assert page.count("was not executed") == 2
