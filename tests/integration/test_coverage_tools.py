"""Coverage of a real run, checked against the tools that read it: gcov's own counts,
genhtml, and an independent drcov reader; then the command line on trace files."""

from __future__ import annotations

import io
import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from branchtrace import RecordConfig, Target, record
from branchtrace.analysis.coverage import Coverage, compute
from branchtrace.reporters import drcov, lcov
from branchtrace.symbols import line_table_for, load_elf
from conftest import FIXTURES, cli

SOURCE = FIXTURES / "cov_lines.c"


@pytest.fixture(scope="module")
def traced(build):
    """cov_lines (gcc -g -O0), recorded from its very first instruction, and its coverage."""
    exe = build("cov_lines")
    trace = record(Target(argv=(str(exe),)), RecordConfig(backend="ptrace", start="entry"))
    assert trace.exit.status == "exited" and trace.exit.code == 0
    return exe, trace, compute(trace)


def exe_module(cov: Coverage, exe: Path) -> int:
    return next(i for i, m in enumerate(cov.modules) if m.path == str(exe))


# -- lcov against gcov --------------------------------------------------------------------

def gcov_of_fixture(tmp_path: Path) -> dict:
    """Build cov_lines with --coverage, run it, and read gcov's JSON for its source."""
    exe = tmp_path / "prog"
    subprocess.run(["gcc", "-g", "-O0", "--coverage", "-o", str(exe), str(SOURCE)],
                   check=True, capture_output=True)
    subprocess.run([str(exe)], check=True, capture_output=True, cwd=tmp_path)
    out = subprocess.run(["gcov", "--stdout", "--json-format", "prog-cov_lines.gcda"],
                         check=True, capture_output=True, text=True, cwd=tmp_path).stdout
    (doc,) = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    (entry,) = [f for f in doc["files"] if Path(f["file"]).name == SOURCE.name]
    return entry


def source_line(number: int) -> str:
    return SOURCE.read_text().splitlines()[number - 1].strip()


def test_lcov_marks_exactly_the_lines_gcov_counts_as_run(traced, tmp_path):
    exe, trace, cov = traced
    result = lcov.line_coverage(cov)
    (ours,) = [f for f in result.files if f.path == str(SOURCE)]
    gcov = gcov_of_fixture(tmp_path)
    theirs = {ln["line_number"]: ln["count"] for ln in gcov["lines"]}

    # Where gcc's line table and gcov attribute the same code to different lines:
    # the prologue is on the opening brace in DWARF, on the function's name for gcov;
    # the epilogue is on the closing brace in DWARF, folded into the last statement by
    # gcov (it lists no closing braces).
    image = load_elf(str(exe))
    functions = {f["name"]: f for f in gcov["functions"]}
    renumber: dict[int, int] = {}
    braces: set[int] = set()
    for name, f in functions.items():
        address = image.symbol_address(name)
        entry_line = int(line_table_for(image).lookup_lines(
            np.array([address], dtype=np.uint64))[1][0])
        renumber[entry_line] = f["start_line"]
        assert entry_line in (f["start_line"], f["start_line"] + 1)   # "{" on its own line
        if f["end_line"] != f["start_line"]:
            braces.add(f["end_line"])
            assert source_line(f["end_line"]) == "}"
    assert renumber == {13: 12, 19: 18, 26: 25, 39: 39, 40: 40, 43: 42}
    assert braces == {16, 23, 37, 63}
    normalized = {renumber.get(ln, ln): hits for ln, hits in ours.lines.items()
                  if ln not in braces}

    # gcov counts case labels, which have no instructions: a trace cannot see them
    # (the line table has no row for them); the case body right after each is seen.
    no_code = sorted(set(theirs) - set(normalized))
    assert no_code == [28, 30, 32, 34]
    assert all(source_line(ln).startswith(("case ", "default:")) for ln in no_code)
    for ln in no_code:
        assert (theirs[ln] > 0) == (normalized[ln + 1] > 0)

    # every other line: the same lines have code, the same lines ran, the same counts
    assert set(normalized) == set(theirs) - set(no_code)
    ran = {ln for ln, hits in normalized.items() if hits > 0}
    assert ran == {ln for ln, count in theirs.items() if count > 0 and ln not in no_code}
    assert normalized == {ln: theirs[ln] for ln in normalized}
    # the lines marked NEVER in the fixture did not run; the closing braces of the
    # functions that returned did
    never = {i for i, text in enumerate(SOURCE.read_text().splitlines(), 1) if "NEVER" in text}
    assert never and all(ours.lines[ln] == 0 for ln in never)
    assert {ln: ours.lines[ln] > 0 for ln in braces} == {16: False, 23: True, 37: True,
                                                         63: True}
    # functions: gcov's execution counts, at DWARF's entry lines
    assert {name: hits for name, (_, hits) in ours.functions.items()} == {
        name: f["execution_count"] for name, f in functions.items()}


def test_genhtml_makes_a_report_of_the_lcov_file(traced, tmp_path):
    if shutil.which("genhtml") is None:
        pytest.fail("genhtml is not installed (Debian: apt-get install lcov)")
    _, _, cov = traced
    info = tmp_path / "cov.info"
    with open(info, "w", encoding="utf-8") as f:
        lcov.render(cov, f, test_name="cov_lines")
    html = tmp_path / "html"
    result = subprocess.run(["genhtml", "-o", str(html), str(info)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr + result.stdout
    assert (html / "index.html").is_file()
    assert list(html.rglob("cov_lines.c.gcov.html"))
    summary = re.search(r"lines\.+: [\d.]+% \((\d+) of (\d+) lines\)", result.stdout)
    assert summary is not None, result.stdout
    # genhtml sums every source file in the report (libc's DWARF also names headers
    # that exist on disk, like /usr/include/.../stdio2.h): compare with our totals
    written = [f for f in lcov.line_coverage(cov).files if Path(f.path).exists()]
    assert str(SOURCE) in {f.path for f in written}
    assert (int(summary[1]), int(summary[2])) == (sum(f.lines_hit for f in written),
                                                  sum(len(f.lines) for f in written))


# -- drcov, read back independently --------------------------------------------------------

def read_drcov(data: bytes) -> tuple[list[str], list[dict], list[tuple[int, int, int]]]:
    header: list[str] = []
    pos = 0
    while not (header and header[-1].startswith("BB Table: ")):
        end = data.index(b"\n", pos)
        header.append(data[pos:end].decode())
        pos = end + 1
    assert header[0] == "DRCOV VERSION: 2" and header[1] == "DRCOV FLAVOR: drcov"
    count = int(re.fullmatch(r"Module Table: version 4, count (\d+)", header[2])[1])
    columns = header[3].removeprefix("Columns: ").split(", ")
    modules = [dict(zip(columns, line.split(", "))) for line in header[4:4 + count]]
    n = int(re.fullmatch(r"BB Table: (\d+) bbs", header[-1])[1])
    assert len(data) - pos == 8 * n
    return header, modules, [struct.unpack_from("<IHH", data, pos + 8 * i) for i in range(n)]


def instructions(exe: Path) -> dict[int, int]:
    """Address -> length of every instruction objdump finds in the program."""
    out = subprocess.run(["objdump", "-d", "--insn-width=16", str(exe)], check=True,
                         capture_output=True, text=True).stdout
    return {int(m[1], 16): len(m[2].split())
            for m in re.finditer(r"^\s+([0-9a-f]+):\t((?:[0-9a-f]{2} )+)", out, re.M)}


def test_drcov_reads_back_with_every_block_of_the_program(traced):
    exe, trace, cov = traced
    out = io.BytesIO()
    left_out = drcov.render(cov, out)
    _, modules, records = read_drcov(out.getvalue())
    assert [m["path"] for m in modules] == [m.path for m in cov.modules]
    assert len(records) == len(cov.blocks) - left_out == int(np.sum(cov.blocks["module"] >= 0))
    exe_id = exe_module(cov, exe)
    base = int(modules[exe_id]["start"], 16)
    assert base == cov.modules[exe_id].start
    mine = sorted((start, size) for start, size, mod in records if mod == exe_id)
    blocks = cov.module_blocks(exe_id)
    assert mine == [(int(b["start"]) - base, int(b["end"] - b["start"])) for b in blocks]
    # blocks begin and end on instruction boundaries of the program (objdump's)
    bias = cov.modules[exe_id].bias
    insns = instructions(exe)
    ends = {address + length for address, length in insns.items()}
    image = load_elf(str(exe))
    for start, size in mine:
        vaddr = base + start - bias
        assert vaddr in insns and vaddr + size in ends
    # the functions that ran begin a block; the ones that never ran are in none
    first = {base + start - bias for start, _ in mine}
    covered = [(base + s - bias, base + s + n - bias) for s, n in mine]
    for name in ("_start", "main", "fib", "area", "twice"):
        assert image.symbol_address(name) in first, name
    for name in ("never_called", "thrice"):
        address = image.symbol_address(name)
        assert not any(lo <= address < hi for lo, hi in covered), name


# -- the command line on trace files ------------------------------------------------------

@pytest.fixture(scope="module")
def trace_file(build, tmp_path_factory):
    exe = build("cov_lines")
    path = tmp_path_factory.mktemp("trace") / "cov_lines.btrace"
    result = cli("run", "--backend", "ptrace", "--start", "entry", "-o", str(path),
                 "--", str(exe))
    assert result.returncode == 0, result.stderr
    return exe, path


def test_coverage_command_writes_each_format(trace_file, tmp_path):
    exe, path = trace_file
    outputs = {}
    for fmt, name in (("drcov", "out.cov"), ("lcov", "out.info"), ("json", "out.json")):
        target = tmp_path / name
        result = cli("coverage", str(path), "--format", fmt, "-o", str(target))
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        outputs[fmt] = target
    _, modules, records = read_drcov(outputs["drcov"].read_bytes())
    exe_id = next(i for i, m in enumerate(modules) if m["path"] == str(exe))
    doc = json.loads(outputs["json"].read_text())
    exe_doc = doc["modules"][exe_id]
    assert exe_doc["path"] == str(exe)
    # drcov and json agree on the blocks of the program
    assert sorted((s, n) for s, n, m in records if m == exe_id) == \
        [(b[0], b[1]) for b in exe_doc["blocks"]]
    assert all(hits >= 1 for _, _, hits in exe_doc["blocks"])
    assert any(kind == "call" for _, _, _, kind, _ in exe_doc["edges"])
    info = outputs["lcov"].read_text()
    assert f"SF:{SOURCE}\n" in info and info.endswith("end_of_record\n")
    # text formats go to stdout with -o -
    stdout = cli("coverage", str(path), "--format", "lcov", "-o", "-")
    assert stdout.returncode == 0 and stdout.stdout == info


def one_line_error(result: subprocess.CompletedProcess[str], code: int | None = None) -> str:
    assert result.returncode != 0
    if code is not None:
        assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def record_ends(data: bytes) -> list[int]:
    """Where each record of a trace file ends (the frame's length field at byte 8 of the
    16-byte frame, after the 16-byte preamble: docs/trace-format.md)."""
    out, pos = [], 16
    while pos + 16 <= len(data):
        pos += 16 + struct.unpack_from("<I", data, pos + 8)[0]
        out.append(pos)
    return out


def test_coverage_command_errors_are_one_line(trace_file, tmp_path):
    _, path = trace_file
    missing = one_line_error(cli("coverage", str(tmp_path / "nope.btrace"), "--format",
                                 "json", "-o", str(tmp_path / "x.json")))
    assert "no such file" in missing
    junk = tmp_path / "junk.btrace"
    junk.write_bytes(b"this is not a trace file\n" * 10)
    assert "junk.btrace" in one_line_error(
        cli("coverage", str(junk), "--format", "json", "-o", str(tmp_path / "x.json")), 6)
    empty = tmp_path / "empty.btrace"
    empty.write_bytes(b"")
    one_line_error(cli("coverage", str(empty), "--format", "lcov", "-o", "-"), 6)
    assert "invalid choice" in one_line_error(
        cli("coverage", str(path), "--format", "gcov", "-o", str(tmp_path / "x")), 2)
    assert "-o" in one_line_error(cli("coverage", str(path), "--format", "lcov"), 2)
    assert "no such directory" in one_line_error(
        cli("coverage", str(path), "--format", "lcov", "-o", str(tmp_path / "no" / "x")), 2)
    assert "directory" in one_line_error(
        cli("coverage", str(path), "--format", "lcov", "-o", str(tmp_path)), 2)
    # a file cut short is read up to its last whole record (README, docs/trace-format.md):
    # exit 0, a warning, and the coverage of what the whole records hold
    whole = json.loads(cli("coverage", str(path), "--format", "json", "-o", "-").stdout)
    assert whole["summary"]["branches"] > 1000 and whole["modules"]
    data = path.read_bytes()
    ends = record_ends(data)      # a ring-mode file: HEADER, CHUNK, MODULEs, THREAD, END
    for name, size, branches in (("inside the chunk", (ends[0] + ends[1]) // 2, 0),
                                 ("after the chunk", ends[1], whole["summary"]["branches"])):
        cut = tmp_path / "cut.btrace"
        cut.write_bytes(data[:size])
        result = cli("coverage", str(cut), "--format", "json", "-o", str(tmp_path / "cut.json"))
        assert result.returncode == 0, (name, result.stderr)
        assert "branchtrace: warning: the trace file was cut short; it is read up to its " \
               "last whole record" in result.stderr.splitlines(), (name, result.stderr)
        assert "Traceback" not in result.stderr
        doc = json.loads((tmp_path / "cut.json").read_text())
        assert doc["summary"]["branches"] == branches, name
        # the module maps come after the chunk: none survive, every block is unmapped
        assert doc["modules"] == [] and \
            doc["summary"]["unmapped_blocks"] == doc["summary"]["blocks"], name
    # a write that fails half-way: /dev/full has no room (and is not removed)
    assert "No space left" in one_line_error(
        cli("coverage", str(path), "--format", "json", "-o", "/dev/full"), 2)
    assert Path("/dev/full").exists()
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "x").exists()
    assert "--test-name" in one_line_error(cli("coverage", str(path), "--format", "lcov",
                                               "-o", "-", "--test-name", "a b"), 2)
