"""Ctrl-C at a real terminal (a pty) while the program sits in a blocking system call.

A terminal's Ctrl-C sends SIGINT to the foreground process group: branchtrace and the
program it started. branchtrace must detach and end soon whatever the program is
doing (under Stalker a thread asleep in ``read`` or ``nanosleep`` used to hold the
detach until the call returned), and the program must go on natively, seeing nothing
(no EINTR). A second Ctrl-C kills the program, and the report says so.

Each test runs, in a new pty, a small wrapper that starts branchtrace in its own
process group (the terminal's foreground group) and stays after branchtrace ends, so
the terminal and the group live on and the program can still be fed input. The bounds
are generous and each one is far below the time the blocking call has left.
"""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import sys
import termios
import time
from pathlib import Path

import pytest

from branchtrace.backends.ptrace import PtraceBackend
from branchtrace.backends.stalker import StalkerBackend

BOUND = 10.0   # seconds from Ctrl-C to branchtrace's end; every blocking call here has more

WRAPPER = """
import signal, subprocess, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
child = subprocess.Popen(sys.argv[1:],
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
rc = child.wait()
sys.stdout.write("\\nBRANCHTRACE-EXIT %d\\n" % rc)
sys.stdout.flush()
time.sleep(120)
"""


def _backends() -> list[object]:
    out: list[object] = []
    for name, backend in (("stalker", StalkerBackend()), ("ptrace", PtraceBackend())):
        probe = backend.probe()
        out.append(pytest.param(name, marks=pytest.mark.skipif(
            not probe.available, reason=f"{name} cannot run here: {probe.reason}")))
    return out


class Terminal:
    """``branchtrace run ARGS`` in a pty of its own, echo off (what is read back is
    what the programs wrote)."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ)
        env.pop("BRANCHTRACE_BACKEND", None)
        argv = [sys.executable, "-c", WRAPPER, sys.executable, "-m", "branchtrace", "run",
                *args]
        pid, fd = pty.fork()
        if pid == 0:   # the child: session leader, the pty its controlling terminal
            try:
                os.execve(sys.executable, argv, env)
            finally:
                os._exit(127)
        attrs = termios.tcgetattr(fd)   # the master's settings are the terminal's
        attrs[3] &= ~termios.ECHO
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        self.pid, self.fd = pid, fd
        self.text = ""
        self.seen = 0   # expect() looks from here on

    def expect(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            found = re.compile(pattern).search(self.text, self.seen)
            if found:
                self.seen = found.end()
                return found
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {pattern!r} within {timeout} s; the terminal "
                                     f"showed:\n{self.text}")
            ready, _, _ = select.select([self.fd], [], [], min(left, 0.1))
            if ready:
                try:
                    data = os.read(self.fd, 65536)
                except OSError:
                    data = b""
                if not data:
                    raise AssertionError(f"the terminal closed; it showed:\n{self.text}")
                self.text += data.decode(errors="replace").replace("\r\n", "\n")

    def type(self, keys: bytes) -> None:
        os.write(self.fd, keys)

    def close(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except OSError:
            pass
        os.close(self.fd)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_until(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def untraced(pid: int) -> bool:
    """Nothing of ours is left in ``pid``: no tracer, no Frida agent mapped."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False
    return "\nTracerPid:\t0\n" in status and "frida" not in maps


@pytest.fixture
def terminal():  # type: ignore[no-untyped-def]
    opened: list[Terminal] = []

    def start(*args: str) -> Terminal:
        t = Terminal(*args)
        opened.append(t)
        return t

    yield start
    for t in opened:
        t.close()


def _end_of_branchtrace(term: Terminal) -> tuple[float, int]:
    start = time.monotonic()
    rc = int(term.expect(r"BRANCHTRACE-EXIT (\d+)", 60).group(1))
    return time.monotonic() - start, rc


@pytest.mark.parametrize("backend", _backends())
def test_ctrl_c_during_a_blocking_read_detaches_and_cat_goes_on(terminal, backend):
    term = terminal("--backend", backend, "--", "cat")
    term.type(b"one\n")
    term.expect(r"one\n", 60)              # cat runs, recorded, and now waits in read()
    time.sleep(0.3)
    term.type(b"\x03")
    elapsed, rc = _end_of_branchtrace(term)
    assert elapsed < BOUND, f"branchtrace took {elapsed:.1f} s to end after Ctrl-C"
    assert rc == 130, term.text
    pid = int(re.search(r"cat \(pid (\d+)\): detached; it keeps running without us",
                        term.text).group(1))          # type: ignore[union-attr]
    assert alive(pid)
    term.type(b"two\n")
    term.expect(r"two\n", 30)              # the same cat still echoes its input
    wait_until(lambda: untraced(pid), 30, "the program to be free of us")
    term.type(b"three\n")
    term.expect(r"three\n", 30)
    term.type(b"\x04")                     # end of input: cat ends normally
    wait_until(lambda: not alive(pid), 30, "cat to end at end of input")


@pytest.mark.parametrize("backend", _backends())
def test_ctrl_c_during_a_long_nanosleep_detaches_and_it_finishes(terminal, backend, build):
    exe = build("rel_block")
    term = terminal("--backend", backend, "--", str(exe), "25")
    term.expect(r"ready\n", 60)
    time.sleep(0.5)                         # in its nanosleep, 24+ s left
    term.type(b"\x03")
    elapsed, rc = _end_of_branchtrace(term)
    assert elapsed < BOUND, f"branchtrace took {elapsed:.1f} s to end after Ctrl-C"
    assert rc == 130, term.text
    pid = int(re.search(r"\(pid (\d+)\): detached; it keeps running without us",
                        term.text).group(1))          # type: ignore[union-attr]
    assert alive(pid)
    # the sleep was not cut short (nanosleep failing says so) and ends normally
    term.expect(r"(slept|nanosleep: .*)\n", 60)
    assert "slept\n" in term.text and "nanosleep:" not in term.text
    wait_until(lambda: not alive(pid), 30, "the program to end")


def test_a_second_ctrl_c_kills_the_program_and_the_report_says_so(terminal):
    if not StalkerBackend().probe().available:
        pytest.skip("stalker cannot run here")
    term = terminal("--backend", "stalker", "--", "cat")
    term.type(b"one\n")
    term.expect(r"one\n", 60)
    time.sleep(0.3)
    term.type(b"\x03")
    time.sleep(0.1)                         # branchtrace is still detaching
    term.type(b"\x03")
    elapsed, rc = _end_of_branchtrace(term)
    assert elapsed < BOUND
    assert rc == 128 + signal.SIGINT, term.text
    found = re.search(r"cat \(pid (\d+)\) was killed by SIGINT", term.text)
    assert found, term.text
    assert "keeps running" not in term.text
    wait_until(lambda: not alive(int(found.group(1))), 10, "cat to be gone")
