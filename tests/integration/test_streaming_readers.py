"""`branchtrace stats` and `coverage` read a trace file chunk by chunk and never hold its
branches: the same results as from the whole trace in memory, and a peak memory that
does not grow with the trace."""

from __future__ import annotations

import io
import json
import subprocess
import sys

from branchtrace.analysis.coverage_union import compute_all
from branchtrace.reporters import collapsed, coverage_json, stats
from branchtrace.tracefile import open_trace
from conftest import cli, need_backend

_MAXRSS = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], "
           "stdout=subprocess.DEVNULL); "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode)")


def _record(exe, path, n: int) -> None:
    done = cli("run", "--backend", "stalker", "--mode", "stream", "--report", "never",
               "-o", str(path), "--", str(exe), str(n), timeout=600)
    assert done.returncode == 0, done.stderr


def _peak_kb(path, command: str = "stats", *options: str) -> int:
    probe = subprocess.run([sys.executable, "-c", _MAXRSS, sys.executable, "-m", "branchtrace",
                            command, str(path), *options],
                           capture_output=True, text=True, timeout=900)
    peak, rc = map(int, probe.stdout.split())
    assert rc == 0, probe.stderr
    return peak


def test_stats_of_a_file_are_the_statistics_of_the_whole_trace(build, tmp_path):
    need_backend("stalker")
    exe = build("loop")
    path = tmp_path / "loop.btrace"
    _record(exe, path, 200_000)
    done = cli("stats", str(path), "--format", "json", "--top", "50")
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    out = io.StringIO()
    stats.render(open_trace(path), out, top=50, fmt="json")   # the branches in memory
    assert got == json.loads(out.getvalue())
    assert got["records"] > 4 * 200_000
    work = next(f for f in got["functions"] if f["name"] == "work")
    assert work["calls"] == 200_000


def test_stats_memory_does_not_grow_with_the_trace(build, tmp_path):
    """3M and 30M loop iterations (~13M and ~130M branches; in memory they would take
    0.2 and 2.2 GB): the peak RSS of `stats`, `coverage` and `profile --format
    collapsed` differs by far less than the branches."""
    need_backend("stalker")
    exe = build("loop")
    small, big = tmp_path / "small.btrace", tmp_path / "big.btrace"
    _record(exe, small, 3_000_000)
    _record(exe, big, 30_000_000)
    total = json.loads(cli("stats", str(big), "--format", "json").stdout)["records"]
    assert total > 100_000_000
    for command in (("stats",), ("coverage", "--format", "json", "-o", str(tmp_path / "c.json")),
                    ("profile", "--format", "collapsed", "-o", str(tmp_path / "p.folded"))):
        peak_small, peak_big = _peak_kb(small, *command), _peak_kb(big, *command)
        assert peak_big < peak_small + 96 * 1024, (command, peak_small, peak_big)
        assert peak_big * 1024 < total * 17 / 4, (command, peak_big, total)  # < 1/4 of them


def test_coverage_of_a_file_is_the_coverage_of_the_whole_trace(build, tmp_path):
    need_backend("stalker")
    exe = build("loop")
    path = tmp_path / "loop.btrace"
    _record(exe, path, 200_000)
    out = tmp_path / "c.json"
    done = cli("coverage", str(path), "--format", "json", "-o", str(out))
    assert done.returncode == 0, done.stderr
    cov = compute_all(open_trace(path))                      # the branches in memory
    got = json.loads(out.read_text())
    buf = io.StringIO()
    coverage_json.render(cov, buf)
    assert got == json.loads(buf.getvalue())
    assert got["summary"]["branches"] > 4 * 200_000


def test_coverage_counted_in_stretches_is_the_coverage_of_the_whole_trace(build, tmp_path,
                                                                          monkeypatch):
    """A thread of many chunks counted in two and three stretches at once (the
    threshold lowered): the coverage of its branches in memory."""
    from branchtrace.tracefile import counts, scan, to_trace
    need_backend("stalker")
    path = tmp_path / "loop.btrace"
    _record(build("loop"), path, 500_000)
    monkeypatch.setattr(counts, "PARALLEL_MIN_IDS", 1)
    want = compute_all(open_trace(path))
    tf = scan(path)
    assert max(len(c) for c in tf.chunks.values()) >= 6
    for workers in (1, 2, 3):
        got = compute_all(to_trace(tf, decode=False),
                          counts=lambda tid: counts.count_runs(tf, tid, workers=workers))
        assert got.blocks.tobytes() == want.blocks.tobytes(), workers
        assert got.edges.tobytes() == want.edges.tobytes(), workers
        assert (got.branches, got.runs, got.dropped_runs, got.notes) == \
            (want.branches, want.runs, want.dropped_runs, want.notes), workers


def test_collapsed_stacks_of_a_file_are_those_of_the_whole_trace(build, tmp_path):
    """`profile --format collapsed` walks the block ids chunk by chunk
    (analysis/contexts.py): byte for byte what call_trace gives in memory."""
    need_backend("stalker")
    exe = build("loop")
    path = tmp_path / "loop.btrace"
    _record(exe, path, 200_000)
    done = cli("profile", str(path), "--format", "collapsed")
    assert done.returncode == 0, done.stderr
    buf = io.StringIO()
    collapsed.render(open_trace(path), buf)                  # the branches in memory
    assert done.stdout == buf.getvalue()
    work = [line for line in done.stdout.splitlines() if line.split(" ")[0].endswith(";work")]
    assert work and sum(int(line.rsplit(" ", 1)[1]) for line in work) >= 200_000
