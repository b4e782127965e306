"""A slow consumer, with each backend: the trace streams (``--mode stream -o FIFO``) into
a pipe whose reader dawdles. Stream mode loses nothing: the program waits for the
consumer instead, and its output is unchanged.

The reader does not guess from a quiet spell when the writer is stuck: it reads nothing
until /proc shows branchtrace's writing thread blocked in a write into the FIFO and the
producer (the ptrace tracer, or the Stalker-run program itself) asleep in its wait for
room, both at once; so the run must count producer waits."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ALL_BACKENDS

import branchtrace


# A loop with a data-dependent branch (its records compress less than a plain loop's)
# that prints a checksum per round: argv[1] rounds of argv[2] iterations.
CHURN_C = r"""
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv)
{
    int rounds = atoi(argv[1]);
    long iterations = atol(argv[2]);
    unsigned long x = 1, acc = 0;
    for (int r = 0; r < rounds; r++) {
        for (long i = 0; i < iterations; i++) {
            x = x * 6364136223846793005UL + 1442695040888963407UL;
            if (x >> 63)
                acc += x >> 7;
            else
                acc ^= x;
        }
        printf("round %d %lx\n", r, acc);
    }
    return 0;
}
"""

# per backend: the program's arguments (ptrace steps ~40k instructions/s, Stalker runs
# near native speed)
ARGS = {"ptrace": ("4", "1500"), "stalker": ("10", "30000")}
PIPE_SIZE, READ_SIZE, READ_PAUSE = 4096, 1024, 0.002
STALL_MAX = 60.0       # seconds: the reader waits at most this long for both to block
POLL = 0.002
# the kernel functions a task blocked writing into a full pipe or FIFO waits in (the
# name depends on the kernel version)
PIPE_WRITE_WAITS = {"pipe_write", "anon_pipe_write", "fifo_pipe_write"}
# where a producer's wait for room (a sleep with backoff: store/producer.py for the
# ptrace tracer, bt_stream_slow in the stalker agent) blocks; the churn program and the
# ptrace tracer sleep nowhere else
PRODUCER_WAITS = {"hrtimer_nanosleep", "do_nanosleep"}
SYS_WRITE, SYS_WRITEV, SYS_PWRITE64 = 1, 20, 18


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _status(pid: int) -> dict[str, str]:
    lines = _read(f"/proc/{pid}/status").splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (/proc/PID/task/TID/children needs a kernel
    option this one may lack: read every process's PPid instead)."""
    return [int(d.name) for d in Path("/proc").iterdir()
            if d.name.isdigit() and _status(int(d.name)).get("PPid") == str(pid)]


def _descendant(pid: int, comm: str) -> int | None:
    """The first process named ``comm`` below ``pid``."""
    todo = [pid]
    while todo:
        p = todo.pop()
        for child in _children(p):
            if _read(f"/proc/{child}/comm").strip() == comm:
                return child
            todo.append(child)
    return None


def _fifo_writer(pid: int, fifo: Path) -> str | None:
    """'TID in WCHAN' for a thread of ``pid`` blocked writing into ``fifo``, else None.

    Proven from the thread's wait channel (a pipe write), the system call it is in
    (write, writev or pwrite64) and that call's file descriptor (``fifo`` itself)."""
    for task in Path(f"/proc/{pid}/task").glob("*"):
        wchan = _read(f"{task}/wchan")
        if wchan not in PIPE_WRITE_WAITS:
            continue
        call = _read(f"{task}/syscall").split()
        if len(call) < 2 or int(call[0]) not in (SYS_WRITE, SYS_WRITEV, SYS_PWRITE64):
            continue
        try:
            target = os.readlink(f"/proc/{pid}/fd/{int(call[1], 16)}")
        except OSError:
            continue
        if target == str(fifo):
            return f"thread {task.name} in {wchan}"
    return None


def _producer_waiting(backend: str, program: int) -> str | None:
    """'who in WCHAN' when the producer is sleeping in its wait for room, else None: with
    ptrace the tracer (the program's TracerPid) records, with Stalker the program's own
    (only) thread does."""
    if backend == "ptrace":
        who = int(_status(program).get("TracerPid", "0"))
        if who == 0:
            return None
    else:
        who = program
    wchan = _read(f"/proc/{who}/task/{who}/wchan")
    return f"{'tracer' if who != program else 'program'} {who} in {wchan}" \
        if wchan in PRODUCER_WAITS else None


@pytest.fixture(scope="module")
def churn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("churn")
    (root / "churn.c").write_text(CHURN_C)
    subprocess.run(["gcc", "-O0", "-o", str(root / "churn"), str(root / "churn.c")], check=True)
    return root / "churn"


class SlowReader(threading.Thread):
    """Opens the FIFO and shrinks the pipe to one page; reads nothing until the writer
    is provably blocked on the full pipe and the producer provably waits for room (both
    seen at once in /proc, see :meth:`_wait_until_blocked`); then reads small pieces with
    a pause after each."""

    def __init__(self, fifo: Path, backend: str) -> None:
        super().__init__(daemon=True)
        self.fifo = fifo
        self.backend = backend
        self.branchtrace = threading.Event()   # set once self.pid is known
        self.pid = 0
        self.data = bytearray()
        self.blocked: tuple[str, str] | None = None   # (the writer, the producer) seen
        self.last_seen = "nothing"
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            fd = os.open(self.fifo, os.O_RDONLY)
            try:
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
                self._wait_until_blocked()
                while chunk := os.read(fd, READ_SIZE):
                    self.data += chunk
                    time.sleep(READ_PAUSE)
            finally:
                os.close(fd)
        except BaseException as err:  # reported by the test
            self.error = err

    def _wait_until_blocked(self) -> None:
        """Until the writing thread sleeps in a write into our FIFO and, at the same time,
        the producer sleeps in its wait for room (the writer cannot go on while we do not
        read, so the store fills and the producer must wait). Gives up after STALL_MAX s:
        the test then fails, saying what it last saw."""
        assert self.branchtrace.wait(STALL_MAX)
        deadline = time.monotonic() + STALL_MAX
        program = None
        while time.monotonic() < deadline:
            program = program or _descendant(self.pid, "churn")
            writer = _fifo_writer(self.pid, self.fifo)
            producer = _producer_waiting(self.backend, program) if program else None
            self.last_seen = f"program {program}, writer: {writer}, producer: {producer}"
            if writer and producer:
                self.blocked = (writer, producer)
                return
            time.sleep(POLL)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_a_slow_pipe_loses_nothing_and_slows_the_program(churn, tmp_path, backend):
    args = ARGS.get(backend, ARGS["stalker"])
    native = subprocess.run([str(churn), *args], capture_output=True, timeout=30, check=True)
    fifo = tmp_path / "trace.fifo"
    os.mkfifo(fifo, 0o600)
    reader = SlowReader(fifo, backend)
    reader.start()
    proc = subprocess.Popen(
        [sys.executable, "-m", "branchtrace", "run", "--backend", backend, "--mode", "stream",
         "--buffer", "1K", "--report", "never", "-o", str(fifo), "--", str(churn), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader.pid = proc.pid
    reader.branchtrace.set()
    try:
        out, err = proc.communicate(timeout=STALL_MAX + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=30)
    assert not reader.is_alive() and reader.error is None, reader.error
    assert reader.blocked is not None, \
        f"writer and producer never seen blocked together; last seen: {reader.last_seen}"
    assert proc.returncode == 0, err.decode(errors="replace")
    assert out == native.stdout   # byte for byte

    copy = tmp_path / "copy.btrace"
    copy.write_bytes(reader.data)
    trace = branchtrace.open(copy)
    assert not trace.truncated and trace.exit.status == "exited" and trace.exit.code == 0
    assert trace.gaps == []
    assert set(trace.lost.values()) == {0}
    assert trace.producer_waits > 0, "the program never waited for the consumer"
    main = trace.branches(trace.pid)
    assert len(main) > 1000
    if backend == "ptrace":  # one record per branch
        assert len(main) == trace.written[trace.pid]
