"""history, profile, stats and crash on trace files: golden outputs, the shape of a
recursive call history, the reconstruction hazards on real programs, and bad input.

Golden files: tests/golden holds a recorded trace of tests/fixtures/fib.c (and the
binary it ran, which the reporters read code and symbols from), with the expected output
of each reporter next to it. See tests/golden/README.md for what was checked by hand and
how to regenerate them (BRANCHTRACE_REGEN_GOLDEN=1).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import FIXTURES, cli

import branchtrace
from branchtrace.analysis import call_trace
from branchtrace.reporters import collapsed, crash, history, perfetto, speedscope, stats
from branchtrace.trace import Trace

GOLDEN = Path(__file__).parent.parent / "golden"
REGEN = os.environ.get("BRANCHTRACE_REGEN_GOLDEN") == "1"
# conftest skips these when ptrace cannot run, and fails them under --require-backend ptrace
needs_ptrace = pytest.mark.backend("ptrace")


def load_golden(name: str) -> Trace:
    """A golden trace, its executable's module pointed at tests/golden/fib wherever the
    repository is (the build id still has to match)."""
    trace = branchtrace.open(GOLDEN / name)
    trace.modules = [dataclasses.replace(m, path=str(GOLDEN / "fib")) if m.name == "fib" else m
                     for m in trace.modules]
    trace._symbolizer = None
    return trace


def text_of(write: Callable[[io.StringIO], None]) -> str:
    out = io.StringIO()
    write(out)
    return out.getvalue()


CASES: dict[str, tuple[str, Callable[[Trace, io.StringIO], None]]] = {
    "calls.txt": ("fib.btrace", lambda t, o: history.render_calls(t, o)),
    "calls-lines-insns.txt": ("fib.btrace", lambda t, o: history.render_calls(
        t, o, lines=True, insn_ranges=True)),
    "insns-source-last60.txt": ("fib.btrace", lambda t, o: history.render_insns(
        t, o, source=True, last=60)),
    "stats.txt": ("fib.btrace", lambda t, o: stats.render(t, o)),
    "collapsed.txt": ("fib.btrace", lambda t, o: collapsed.render(t, o)),
    "speedscope.json": ("fib.btrace", lambda t, o: speedscope.render(t, o)),
    "perfetto.json": ("fib.btrace", lambda t, o: perfetto.render(t, o)),
    "crash.txt": ("fib-crash.btrace", lambda t, o: crash.render(t, o)),
    "crash-insns-last12.txt": ("fib-crash.btrace", lambda t, o: history.render_insns(
        t, o, last=12)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name, monkeypatch):
    monkeypatch.chdir(FIXTURES)          # the binary's DWARF names ./fib.c
    source, write = CASES[name]
    got = text_of(lambda out: write(load_golden(source), out))
    if REGEN:
        # Writing the file makes the comparison below hollow: fail instead, so that
        # nothing regenerated passes until a person has read the diff and unset the
        # variable (tests/golden/README.md says what to check).
        before = (GOLDEN / name).read_text() if (GOLDEN / name).exists() else None
        (GOLDEN / name).write_text(got)
        pytest.fail(f"regenerated: review the diff (git diff tests/golden/{name}; "
                    f"{'unchanged' if got == before else 'changed'}), then run without "
                    f"BRANCHTRACE_REGEN_GOLDEN")
    assert got == (GOLDEN / name).read_text()


def test_regenerating_a_golden_file_fails(tmp_path, monkeypatch):
    """BRANCHTRACE_REGEN_GOLDEN=1 writes the file and fails: a regenerated golden file
    never passes by construction."""
    copy = tmp_path / "golden"
    copy.mkdir()
    for name in ("fib", "fib.btrace"):
        (copy / name).write_bytes((GOLDEN / name).read_bytes())
    (copy / "stats.txt").write_text("stale\n")
    module = sys.modules[__name__]
    monkeypatch.setattr(module, "GOLDEN", copy)
    monkeypatch.setattr(module, "REGEN", True)
    with pytest.raises(pytest.fail.Exception, match="regenerated: review the diff"):
        test_golden("stats.txt", monkeypatch)
    assert (copy / "stats.txt").read_text() == (GOLDEN / "stats.txt").read_text()


def fib_shape() -> list[tuple[str, int]]:
    """The segments GDB's function-call-history shows for tests/fixtures/fib.c from main."""
    out = [("main", 0)]

    def fib(n: int, depth: int) -> None:
        out.append(("fib", depth))
        if n >= 2:
            fib(n - 1, depth + 1)
            out.append(("fib", depth))
            fib(n - 2, depth + 1)
            out.append(("fib", depth))

    fib(6, 1)
    out.append(("main", 0))
    for _ in range(3):
        out += [("square", 1), ("main", 0)]
    return out


def segments(text: str) -> list[tuple[str, int]]:
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        n, rest = line.split("\t")[:2]
        assert int(n) == number
        name = rest.lstrip(" ")
        out.append((name, (len(rest) - len(name)) // 2))
    return out


def test_fib_shape_by_hand():
    shape = fib_shape()
    assert len(shape) == 57                     # counted in tests/fixtures/fib.c
    assert shape.count(("main", 0)) == 5 and sum(1 for s in shape if s[0] == "fib") == 49
    assert max(d for _, d in shape) == 6        # fib(6) at depth 1 down to fib(1) at 6


def test_golden_fib_call_history_has_gdbs_shape():
    trace = load_golden("fib.btrace")
    ct = call_trace(trace, trace.pid)
    got = [(ct.functions.name(int(f)), int(d)) for f, d in zip(ct.seg_function, ct.seg_depth)]
    assert got == fib_shape()


@needs_ptrace
def test_fib_call_history_from_a_new_recording(build, tmp_path):
    exe = build("fib")
    trace = tmp_path / "fib.btrace"
    r = cli("run", "--backend", "ptrace", "--mode", "stream", "-o", str(trace), "--", str(exe))
    assert r.returncode == 0, r.stderr
    r = cli("history", str(trace), "--calls")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert segments(r.stdout) == fib_shape()
    r = cli("history", str(trace), "--calls", "--last", "3", "--no-indent", "--insn-ranges")
    lines = r.stdout.splitlines()
    assert [ln.split("\t")[:2] for ln in lines] == [["55", "main"], ["56", "square"],
                                                    ["57", "main"]]
    assert all(re.search(r"\tinst \d+,\d+$", ln) for ln in lines)
    # instruction history: numbered from 1, the last one is the exit system call
    r = cli("history", str(trace), "--insns")
    lines = r.stdout.splitlines()
    assert lines[0].startswith("1\t") and lines[-1].endswith("\tsyscall")
    assert int(lines[-1].split("\t")[0]) == len(lines)
    first, last = (int(x) for x in re.search(r"inst (\d+),(\d+)", cli(
        "history", str(trace), "--calls", "--insn-ranges", "--last", "1").stdout).groups())
    assert first <= last == len(lines)


@needs_ptrace
def test_profiles_and_stats_from_a_new_recording(build, tmp_path):
    exe = build("fib")
    trace = tmp_path / "fib.btrace"
    assert cli("run", "--backend", "ptrace", "--mode", "stream", "-o", str(trace), "--",
               str(exe)).returncode == 0
    records = len(branchtrace.open(trace).branches())
    out = tmp_path / "p.json"
    r = cli("profile", str(trace), "--format", "perfetto", "-o", str(out))
    assert r.returncode == 0, r.stderr
    calls = [e for e in json.loads(out.read_text())["traceEvents"] if e["ph"] == "X"]
    assert len(calls) == 1 + 25 + 3             # main, every fib, every square
    r = cli("profile", str(trace), "--format", "speedscope")
    doc = json.loads(r.stdout)
    assert len(doc["profiles"][0]["events"]) == 2 * 29
    r = cli("profile", str(trace), "--format", "collapsed")
    assert sum(int(ln.rsplit(" ", 1)[1]) for ln in r.stdout.splitlines()) == records
    r = cli("stats", str(trace), "--format", "json")
    assert json.loads(r.stdout)["records"] == records


def _live(build, fixture: str) -> Trace:
    return branchtrace.record(branchtrace.Target(argv=(str(build(fixture)),)),
                              branchtrace.RecordConfig(backend="ptrace", mode="stream"))


def _segments(trace: Trace) -> list[tuple[str, int, int]]:
    ct = call_trace(trace, trace.pid)
    return [(ct.functions.name(int(f)), int(d), int(fr))
            for f, d, fr in zip(ct.seg_function, ct.seg_depth, ct.seg_frame)]


@needs_ptrace
def test_longjmp_in_a_real_program(build):
    segs = _segments(_live(build, "conf_longjmp"))
    mains = [s for s in segs if s[0] == "main"]
    # main's frame goes on after the longjmp, at the depth it had, and inner never returns
    assert len({(d, fr) for _, d, fr in mains}) == 1
    inner = [i for i, s in enumerate(segs) if s[0] == "inner"]
    assert [segs[i][1] for i in inner] == [mains[0][1] + 1, mains[0][1] + 2, mains[0][1] + 3]
    after = next(i for i in range(inner[-1], len(segs)) if segs[i][0] == "main")
    assert segs[after][1] == mains[0][1]


@needs_ptrace
def test_signal_handler_in_a_real_program(build):
    segs = _segments(_live(build, "signal"))
    h = next(i for i, s in enumerate(segs) if s[0] == "on_signal")
    interrupted = segs[h - 1]
    assert segs[h][1] == interrupted[1] + 1
    # the handler returns to the restorer (same depth), whose sigreturn goes back to the
    # very frame the signal interrupted
    back = next(i for i in range(h + 1, len(segs)) if segs[i][1] == interrupted[1])
    assert segs[back][2] == interrupted[2]
    assert all(s[1] == segs[h][1] for s in segs[h + 1:back])


def one_line_error(result) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("branchtrace")
    return lines[0]


GOOD = str(GOLDEN / "fib.btrace")
NOT_A_TRACE = str(FIXTURES / "fib.c")


@pytest.mark.parametrize("command", [
    ["history"], ["history", "--insns"], ["profile", "--format", "perfetto"],
    ["profile", "--format", "collapsed"], ["stats"], ["crash"]])
@pytest.mark.parametrize("file, extra, words", [
    ("/nonexistent/x.btrace", [], "no such file"),
    (NOT_A_TRACE, [], "not a branchtrace trace file"),
    (str(FIXTURES), [], "directory"),
    (GOOD, ["--thread", "4242"], "no thread 4242 in the trace"),
    (GOOD, ["--thread", "x"], "'x'"),
    (GOOD, ["-o", "/nonexistent/dir/out"], "no such directory"),
])
def test_bad_input(command, file, extra, words):
    line = one_line_error(cli(command[0], file, *command[1:], *extra))
    assert words in line


@pytest.mark.parametrize("args, words", [
    (["history", GOOD, "--last", "0"], "'0'"),
    (["history", GOOD, "--last", "-3"], "-3"),
    (["history", GOOD, "--insns", "--last", "many"], "'many'"),
    (["crash", GOOD, "--last", "0"], "'0'"),
    (["history", GOOD, "--calls", "--insns"], "not allowed with"),
    (["history", GOOD, "--insns", "--lines"], "go with --calls"),
    (["history", GOOD, "--source"], "goes with --insns"),
    (["profile", GOOD], "--format"),
    (["profile", GOOD, "--format", "svg"], "invalid choice"),
    (["stats", GOOD, "--top", "0"], "'0'"),
    (["history"], "FILE"),
])
def test_bad_options(args, words):
    assert words in one_line_error(cli(*args))


def test_no_half_written_output_on_error(tmp_path):
    out = tmp_path / "out.json"
    r = cli("profile", NOT_A_TRACE, "--format", "perfetto", "-o", str(out))
    one_line_error(r)
    assert not out.exists()
