"""A slow consumer, with each backend: the trace streams (``--mode stream -o FIFO``) into
a pipe whose reader dawdles. Stream mode loses nothing: the program waits for the
consumer instead, and its output is unchanged."""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess
import sys
import termios
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
STALL_MAX = 10.0       # seconds: the reader waits at most this long for a full pipe
STUCK, STALL_MORE = 0.3, 1.0   # unchanged this long: stuck; then the store fills up


@pytest.fixture(scope="module")
def churn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("churn")
    (root / "churn.c").write_text(CHURN_C)
    subprocess.run(["gcc", "-O0", "-o", str(root / "churn"), str(root / "churn.c")], check=True)
    return root / "churn"


class SlowReader(threading.Thread):
    """Opens the FIFO and shrinks the pipe to one page; reads nothing until the writer
    is stuck on a full pipe (STUCK seconds without change, 3/4 of a page held), and for
    STALL_MORE seconds after that; then reads small pieces with a pause after each."""

    def __init__(self, fifo: Path) -> None:
        super().__init__(daemon=True)
        self.fifo = fifo
        self.data = bytearray()
        self.stuck_at: int | None = None   # bytes in the pipe when the writer was stuck
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            fd = os.open(self.fifo, os.O_RDONLY)
            try:
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
                self._wait_until_stuck(fd)
                time.sleep(STALL_MORE)
                while chunk := os.read(fd, READ_SIZE):
                    self.data += chunk
                    time.sleep(READ_PAUSE)
            finally:
                os.close(fd)
        except BaseException as err:  # reported by the test
            self.error = err

    def _wait_until_stuck(self, fd: int) -> None:
        deadline = time.monotonic() + STALL_MAX
        held, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            now_held = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0]
            if now_held != held:
                held, since = now_held, time.monotonic()
            elif held >= PIPE_SIZE * 3 // 4 and time.monotonic() - since >= STUCK:
                self.stuck_at = held
                return
            time.sleep(0.01)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_a_slow_pipe_loses_nothing_and_slows_the_program(churn, tmp_path, backend):
    args = ARGS.get(backend, ARGS["stalker"])
    native = subprocess.run([str(churn), *args], capture_output=True, timeout=30, check=True)
    fifo = tmp_path / "trace.fifo"
    os.mkfifo(fifo, 0o600)
    reader = SlowReader(fifo)
    reader.start()
    proc = subprocess.run(
        [sys.executable, "-m", "branchtrace", "run", "--backend", backend, "--mode", "stream",
         "--buffer", "1K", "--report", "never", "-o", str(fifo), "--", str(churn), *args],
        capture_output=True, timeout=60)
    reader.join(timeout=30)
    assert not reader.is_alive() and reader.error is None, reader.error
    assert reader.stuck_at is not None, "the pipe never filled: the consumer was not slowed"
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert proc.stdout == native.stdout   # byte for byte

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
