"""``branchtrace run/attach -o FILE``: real recordings written to trace files and read back."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import branchtrace
from branchtrace.backends import Target
from branchtrace.model import BranchKind
from branchtrace.recorder import RecordConfig, record
from conftest import cli, marker_line, need_backend
from test_ptrace_counts import expected_work, kinds_inside


def kinds(array: np.ndarray) -> Counter[str]:
    return Counter(BranchKind(int(k)).label for k in array["kind"])


def run_to_file(exe: Path, out: Path, *args: str, n: int = 300) -> branchtrace.Trace:
    result = cli("run", "--backend", "ptrace", "--disable-randomization", "-o", str(out), *args,
                 "--", str(exe), str(n))
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and result.stdout == ""
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    return branchtrace.open(out)


@pytest.mark.parametrize("mode", ["ring", "stream"])
def test_run_writes_a_trace_file_that_reads_back(build, tmp_path, mode):
    exe, n = build("loop"), 300
    out = tmp_path / "loop.btrace"
    # stream: a small buffer, so that many chunks are written while the program runs
    trace = run_to_file(exe, out, "--mode", mode, *(["--buffer", "1000"] if mode == "stream" else []))
    assert (trace.backend, trace.mode, trace.argv) == ("ptrace", mode, (str(exe), str(n)))
    assert trace.exit.status == "exited" and trace.exit.code == 0 and not trace.truncated
    assert list(trace.threads) == [trace.pid]
    assert any(m.path == str(exe) for m in trace.modules)
    assert kinds_inside(trace, trace.pid, "work") == expected_work(n)
    got = trace.branches(trace.pid)
    assert trace.lost == {trace.pid: 0} and trace.gaps == []
    assert trace.written[trace.pid] == len(got)
    if mode == "stream":
        assert len(trace.chunk_times[trace.pid]) > 1
    # the same program recorded in memory takes the same branches
    memory = record(Target(argv=(str(exe), str(n)), disable_aslr=True),
                    RecordConfig(backend="ptrace", mode=mode))
    assert len(memory.branches(memory.pid)) == len(got)
    assert kinds(memory.branches(memory.pid)) == kinds(got)
    # cut short anywhere: still readable, and it says so
    data = out.read_bytes()
    cut = tmp_path / "cut.btrace"
    for k in range(1, 20):
        cut.write_bytes(data[:len(data) * k // 20])
        part = branchtrace.open(cut)
        assert part.truncated
        for array in part.threads.values():
            assert np.array_equal(array, got[:len(array)])


def test_ring_file_keeps_the_newest_n_and_counts_the_rest(build, tmp_path):
    exe = build("loop")
    full = run_to_file(exe, tmp_path / "full.btrace", "--mode", "stream")
    ring = run_to_file(exe, tmp_path / "ring.btrace", "--mode", "ring", "--buffer", "500")
    total, kept = len(full.branches(full.pid)), ring.branches(ring.pid)
    assert len(kept) == 500 and ring.written[ring.pid] == total
    assert ring.lost == {ring.pid: total - 500}
    assert [(g.index, g.count) for g in ring.gaps] == [(0, total - 500)]
    assert np.array_equal(kept, full.branches(full.pid)[-500:])


def test_the_crash_report_is_still_printed(build, tmp_path):
    exe = build("crash")
    out = tmp_path / "crash.btrace"
    result = cli("run", "--backend", "ptrace", "--mode", "stream", "--last", "4", "-o", str(out),
                 "--", str(exe))
    assert result.returncode == 139
    assert "killed by SIGSEGV (Segmentation fault)" in result.stderr
    line = marker_line("crash.c", "CALL_STEP2")
    assert f"crash.c:{line}" in result.stderr and "step2+0x0 (crash)" in result.stderr
    trace = branchtrace.open(out)
    ex = trace.exit
    assert (ex.status, ex.signal, ex.fault_address, ex.tid) == ("signaled", 11, 0, trace.pid)
    assert trace.symbolizer.describe(ex.fault_pc).function == "step2"
    calls = [trace.symbolizer.describe(int(b["to_ip"])).function
             for b in trace.branches(trace.pid) if b["kind"] == BranchKind.CALL]
    assert calls[-2:] == ["step1", "step2"]


def test_a_killed_tracer_leaves_a_readable_file(build, tmp_path):
    exe = build("loop")
    out = tmp_path / "killed.btrace"
    tracer = subprocess.Popen(
        [sys.executable, "-m", "branchtrace", "run", "--backend", "ptrace", "--mode", "stream",
         "--buffer", "512", "-o", str(out), "--", str(exe), "1000000"],
        start_new_session=True, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:     # chunks land in the file while it runs
            if out.exists() and out.stat().st_size > 20_000:
                break
            time.sleep(0.05)
        assert tracer.poll() is None, tracer.stderr.read() if tracer.stderr else ""
    finally:
        os.killpg(tracer.pid, signal.SIGKILL)
        tracer.communicate(timeout=60)
    trace = branchtrace.open(out)
    assert trace.truncated and trace.exit.status == "unknown"
    assert any("did not finish" in note for note in trace.notes)
    got = trace.branches(trace.pid)
    assert len(got) >= 1000 and kinds(got)["return"] > 100
    assert str(exe) in {m.path for m in trace.modules}   # module maps come as the run goes


def test_attach_writes_a_trace_file(build, tmp_path):
    exe = build("sleeper")
    done, out = tmp_path / "done", tmp_path / "attach.btrace"
    program = subprocess.Popen([str(exe), str(done), "30"])
    try:
        time.sleep(0.2)
        result = cli("attach", str(program.pid), "--duration", "0.5", "--backend", "ptrace",
                     "--report", "never", "-o", str(out))
        assert result.returncode == 0, result.stderr
    finally:
        program.wait(timeout=60)
    trace = branchtrace.open(out)
    assert trace.pid == program.pid and trace.exit.status == "detached"
    assert trace.total() > 0 and not trace.truncated
    assert program.returncode == 0


def test_output_errors_are_one_line_and_nothing_runs(build, tmp_path):
    marker = tmp_path / "ran"
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (tmp_path / "link").symlink_to(victim)
    for target, words in ((tmp_path, "Is a directory"), (tmp_path / "link", "symbolic link"),
                          (tmp_path / "no" / "dir.btrace", "No such file")):
        result = cli("run", "--backend", "ptrace", "-o", str(target), "--", "/bin/sh", "-c",
                     f"touch {marker}")
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 125 and len(lines) == 1 and words in lines[0], result.stderr
        assert not marker.exists()
    assert victim.read_text() == "keep me"
    # a program that cannot start leaves no file behind
    gone = tmp_path / "gone.btrace"
    result = cli("run", "--backend", "ptrace", "-o", str(gone), "--", "/nonexistent/program")
    assert result.returncode != 0 and not gone.exists()


class Progress:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def progress(self, records: int, file_bytes: int) -> None:
        self.calls.append((records, file_bytes))


def test_record_api_writes_the_file_and_keeps_the_newest_in_memory(build, tmp_path):
    exe, out, progress = build("loop"), tmp_path / "api.btrace", Progress()
    trace = record(Target(argv=(str(exe), "300")),
                   RecordConfig(backend="ptrace", mode="stream", buffer="1000"),
                   output=out, keep=10, listener=progress)
    full = branchtrace.open(out)
    everything = full.branches(full.pid)
    assert np.array_equal(trace.branches(trace.pid), everything[-10:])
    assert trace.written == full.written == {full.pid: len(everything)}
    assert (trace.exit, trace.pid, trace.modules) == (full.exit, full.pid, full.modules)
    # progress came chunk by chunk, while the program ran; then the end records
    assert len(progress.calls) > 2 and progress.calls[-1][0] == len(everything)
    assert [r for r, _ in progress.calls] == sorted(r for r, _ in progress.calls)
    assert progress.calls[-1][1] < out.stat().st_size
    # the times of the kept branches come from the chunks they were drained in
    times = trace.chunk_times[trace.pid]
    assert int(times["count"].sum()) == 10 and int(times["index"][0]) == 0


@pytest.mark.parametrize("mode", ["ring", "stream"])
def test_block_id_traces_round_trip_through_a_file(build, tmp_path, mode):
    """The stalker backend's encoding (block ids + block table) written and read back."""
    need_backend("stalker")
    exe, n = build("loop"), 2000
    out = tmp_path / "loop.btrace"
    result = cli("run", "--backend", "stalker", "--mode", mode, "-o", str(out), "--", str(exe), str(n))
    assert result.returncode == 0, result.stderr
    trace = branchtrace.open(out)
    assert (trace.backend, trace.mode) == ("stalker", mode) and not trace.truncated
    assert kinds_inside(trace, trace.pid, "work") == expected_work(n)
    memory = record(Target(argv=(str(exe), str(n))), RecordConfig(backend="stalker", mode=mode))
    assert kinds_inside(memory, memory.pid, "work") == expected_work(n)
    assert trace.lost.get(trace.pid, 0) == 0


_MAXRSS = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode)")


def test_a_stream_without_a_file_keeps_only_what_the_report_shows(build, tmp_path):
    """`run --mode stream` without -o: ~90M branches went through memory, and the run
    kept every one of them (2.3 GB peak; a longer run died of MemoryError, exit 70,
    and the program's status was lost). It keeps the last --last N per thread: the
    peak stays near the store's size. The report still counts every branch."""
    need_backend("stalker")
    exe = build("loop")
    n = 20_000_000
    probe = subprocess.run(
        [sys.executable, "-c", _MAXRSS, sys.executable, "-m", "branchtrace", "run",
         "--backend", "stalker", "--mode", "stream", "--report", "always",
         "--report-to", str(tmp_path / "report.txt"), "--last", "4", "--", str(exe), str(n)],
        capture_output=True, text=True, timeout=600)
    peak_kb, rc = map(int, probe.stdout.split())
    assert rc == 0, probe.stderr
    report = (tmp_path / "report.txt").read_text()
    recorded = int(report.split(" branches recorded")[0].rsplit(" ", 1)[1])
    assert recorded > 4 * n                       # every branch went through memory
    assert report.count("=>") == 4
    # 17 bytes a branch would be 1.5 GB; the store, the decoder and Python fit in 700 MB
    assert peak_kb < 700 * 1024, f"peak RSS {peak_kb} KB for {recorded} branches"


def test_a_report_that_cannot_be_written_leaves_the_programs_status(build, tmp_path):
    """The report goes to /dev/full: writing it fails after the program ran. One line
    says so, and branchtrace exits with the program's status (it exited 2 before)."""
    need_backend("stalker")
    result = cli("run", "--backend", "stalker", "--report", "always", "--report-to", "/dev/full",
                 "--", "/bin/sh", "-c", "exit 3")
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == ["branchtrace: the report could not be made: cannot write the report to "
                     "/dev/full: No space left on device"], lines


@pytest.mark.parametrize("buffer", [[], ["--buffer", "128K"]])
def test_stalker_stream_file_counts_every_record_it_holds(build, tmp_path, buffer):
    """The writer joins a stream's drains into whole chunks and holds a tail back: the
    THREAD record's count of records kept must include that tail (a reader takes the
    chunks up to it), and equal what the program wrote."""
    need_backend("stalker")
    from branchtrace.tracefile import scan

    exe, out = build("loop"), tmp_path / "s.btrace"
    result = cli("run", "--backend", "stalker", "--mode", "stream", *buffer, "-o", str(out),
                 "--report", "never", "--", str(exe), "200000")
    assert result.returncode == 0, result.stderr
    tf = scan(out)
    (info,) = tf.threads
    in_file = sum(c.head.count for c in tf.chunks[info.tid])
    assert info.kept == in_file == info.written > 65536 and info.lost == 0
