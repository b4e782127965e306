"""Faults in the middle of a ptrace recording (issue 5): branchtrace SIGKILLed, or the
program SIGKILLed. The program is never left stopped or killed by us, and the trace file
holds what was recorded up to the fault and reads back."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import branchtrace
from branchtrace.model import BranchKind

pytestmark = pytest.mark.backend("ptrace")   # see tests/conftest.py

LINES = 12

# Computes (a kill lands while a thread is being single-stepped, when the kernel would
# leave the trap flag set) and prints a checksum line per round, after an optional pause
# of argv[2] microseconds; its output is the same on every run.
BUSY_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv)
{
    int lines = atoi(argv[1]), pause = argc > 2 ? atoi(argv[2]) : 0;
    unsigned long x = 1;
    for (int n = 0; n < lines; n++) {
        if (pause)
            usleep(pause);
        for (int i = 0; i < 2000; i++)
            x = (x >> 63) ? x * 6364136223846793005UL + 1 : x * 3 + 1442695040888963407UL;
        printf("%d %lx\n", n, x);
        fflush(stdout);
    }
    return 0;
}
"""


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The compiled BUSY_C: about 0.3 s a line under ptrace, 10 µs natively."""
    root = tmp_path_factory.mktemp("busy")
    (root / "busy.c").write_text(BUSY_C)
    subprocess.run(["gcc", "-O0", "-o", str(root / "busy"), str(root / "busy.c")], check=True)
    return root / "busy"


def branchtrace_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "branchtrace", *args]


class Reader:
    """Reads a pipe with a deadline, so a hung program fails the test instead of it."""

    def __init__(self, fd: int, timeout: float = 30) -> None:
        self.fd = fd
        self.deadline = time.monotonic() + timeout
        self.data = b""

    def _more(self) -> bool:
        left = self.deadline - time.monotonic()
        if left <= 0 or not select.select([self.fd], [], [], left)[0]:
            raise AssertionError(f"timed out; read so far: {self.data!r}")
        chunk = os.read(self.fd, 65536)
        self.data += chunk
        return bool(chunk)

    def lines(self, n: int) -> None:
        while self.data.count(b"\n") < n:
            if not self._more():
                raise AssertionError(f"pipe closed after {self.data!r}")

    def to_end(self) -> bytes:
        while self._more():
            pass
        return self.data


def native(exe: Path, *args: str) -> bytes:
    return subprocess.run([str(exe), *args], capture_output=True, timeout=30, check=True).stdout


def assert_records_decode(trace: branchtrace.Trace) -> None:
    """Every branch in the trace is a real one: a known kind, two addresses of the program."""
    kinds = {int(k) for k in BranchKind}
    for tid, branches in trace.threads.items():
        assert set(np.unique(branches["kind"]).tolist()) <= kinds, f"thread {tid}"
        assert (branches["from_ip"] != 0).all() and (branches["to_ip"] != 0).all()
    assert not [g for g in trace.gaps if "corrupt" in g.reason]


def wait_for_chunks(path: Path, timeout: float = 20) -> None:
    """Until the file being written holds branches. (Waiting only for it to grow past
    its header was not enough: an attach writes the module maps and the process first,
    and a CI run killed branchtrace between those and the first chunk: 0 branches.)"""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if path.exists() and branchtrace.open(path).total() > 0:
                return
        except Exception:  # noqa: BLE001 - a record half written: read again
            pass
        time.sleep(0.05)
    raise AssertionError(f"{path} never held a branch in {timeout:g} s")


def sigkill_and_reap(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGKILL)  # branchtrace only, not its process group
    assert proc.wait(timeout=10) == -signal.SIGKILL


@pytest.mark.parametrize("mode", ["stream", "ring"])
def test_killed_branchtrace_run_lets_the_program_finish(busy, tmp_path, mode):
    exe = busy
    expected = native(exe, str(LINES))
    out = tmp_path / "killed.btrace"
    proc = subprocess.Popen(
        branchtrace_cmd("run", "--backend", "ptrace", "--mode", mode, "--buffer", "1K",
                        "-o", str(out), "--report", "never", "--", str(exe), str(LINES)),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    reader = Reader(proc.stdout.fileno())
    try:
        reader.lines(2)       # it is being stepped: a line every few tenths of a second
        time.sleep(0.05)
        sigkill_and_reap(proc)
        # EOF: the program (and our tracer process, which shares the pipe) ended
        assert reader.to_end() == expected
    finally:
        if proc.poll() is None:
            proc.kill()
    trace = branchtrace.open(out)
    assert trace.truncated
    assert_records_decode(trace)
    if mode == "stream":  # chunks and module maps were written while it ran
        assert trace.total() > 0
        assert str(exe) in {m.path for m in trace.modules}
        assert "main" in {trace.symbolizer.describe(int(ip)).function
                          for ip in trace.branches(trace.pid)["from_ip"][:2000]}


def test_killed_branchtrace_attach_lets_the_program_finish(busy, tmp_path):
    exe = busy
    args = ("100", "20000")   # 2 s natively, 0.3 s a line when stepped
    expected = native(exe, *args)
    out = tmp_path / "attach.btrace"
    program = subprocess.Popen([str(exe), *args], stdout=subprocess.PIPE)
    assert program.stdout is not None
    reader = Reader(program.stdout.fileno())
    proc = None
    try:
        reader.lines(1)
        proc = subprocess.Popen(
            branchtrace_cmd("attach", str(program.pid), "--backend", "ptrace", "--mode",
                            "stream", "--buffer", "1K", "-o", str(out), "--report", "never"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_chunks(out)   # it is stepping the program
        sigkill_and_reap(proc)
        assert reader.to_end() == expected
        assert program.wait(timeout=10) == 0
    finally:
        for p in (program, proc):
            if p is not None and p.poll() is None:
                p.kill()
    trace = branchtrace.open(out)
    assert trace.truncated and trace.total() > 0
    assert_records_decode(trace)


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        found += [int(c) for c in children]
        todo += [int(c) for c in children]
    return found


def test_killed_program_ends_a_readable_stream_file(busy, tmp_path):
    exe = busy
    out = tmp_path / "victim.btrace"
    proc = subprocess.Popen(
        branchtrace_cmd("run", "--backend", "ptrace", "--mode", "stream", "--buffer", "1K",
                        "-o", str(out), "--report", "never", "--", str(exe), "40"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        Reader(proc.stdout.fileno()).lines(2)
        victims = [p for p in descendants(proc.pid)
                   if Path(f"/proc/{p}/exe").resolve() == exe.resolve()]
        assert len(victims) == 1, victims
        os.kill(victims[0], signal.SIGKILL)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGKILL, err
    trace = branchtrace.open(out)
    assert not trace.truncated
    assert trace.exit.status == "signaled" and trace.exit.signal == signal.SIGKILL
    assert trace.pid == victims[0]
    assert_records_decode(trace)
    branches = trace.branches(trace.pid)
    lost = trace.lost.get(trace.pid, 0)
    assert len(branches) > 1000
    assert len(branches) + lost == trace.written[trace.pid]   # every record drained is there
    assert bool(lost) == any(g.tid == trace.pid for g in trace.gaps)


def state_of(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def test_killed_branchtrace_leaves_a_stopped_program_stopped(busy, tmp_path):
    """Job control stopped the program (SIGSTOP); branchtrace dies: its tracer process
    detaches anyway and ends, the program stays stopped, and SIGCONT lets it finish."""
    args = ("30", "20000")
    expected = native(busy, *args)
    proc = subprocess.Popen(
        branchtrace_cmd("run", "--backend", "ptrace", "--report", "never", "--", str(busy), *args),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    reader = Reader(proc.stdout.fileno())
    program = None
    try:
        reader.lines(1)
        tracer, program = descendants(proc.pid)
        os.kill(program, signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while state_of(program) not in ("t", "T") and time.monotonic() < deadline:
            time.sleep(0.02)
        sigkill_and_reap(proc)
        while state_of(tracer) not in (None, "Z") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert state_of(tracer) in (None, "Z"), "the tracer process did not end"
        assert state_of(program) == "T"   # stopped, as job control asked; no longer traced
        assert "TracerPid:\t0" in Path(f"/proc/{program}/status").read_text()
        os.kill(program, signal.SIGCONT)
        assert reader.to_end() == expected
    finally:
        if proc.poll() is None:
            proc.kill()
        if program is not None and state_of(program) not in (None, "Z"):
            os.kill(program, signal.SIGKILL)
