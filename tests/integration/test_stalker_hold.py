"""hold.py parks a process where it is to be followed from (``jmp $`` in place of its
first two bytes) and gives it its code back: the program then runs exactly as it would
have. Pure ptrace (no Frida): rel_plain_exit.c prints "plain" and exits 0.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import time
from pathlib import Path

import pytest

from branchtrace.backends.linux import sys as pt
from branchtrace.backends.stalker import hold
from branchtrace.backends.stalker.launch import continue_if_stopped

pytestmark = pytest.mark.backend("ptrace")

PTRACE_TRACEME = 0
AT_ENTRY = 9


def _traceme() -> None:
    pt.ptrace(PTRACE_TRACEME, 0)


def start_at_exec(exe: Path, out: Path) -> subprocess.Popen[bytes]:
    """The program, stopped under our ptrace at its exec (in ld.so's first instruction)."""
    with open(out, "wb") as f:
        proc = subprocess.Popen([str(exe)], stdout=f, preexec_fn=_traceme)
    _, status = os.waitpid(proc.pid, 0)
    assert os.WIFSTOPPED(status) and os.WSTOPSIG(status) == signal.SIGTRAP
    return proc


def code_at(pid: int, address: int) -> bytes:
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        mem.seek(address)
        return mem.read(2)


def state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def entry_point(pid: int) -> int:
    raw = Path(f"/proc/{pid}/auxv").read_bytes()
    for key, value in struct.iter_unpack("<QQ", raw[: len(raw) // 16 * 16]):
        if key == AT_ENTRY:
            return int(value)
    raise AssertionError("no AT_ENTRY")


def finish(proc: subprocess.Popen[bytes], out: Path) -> None:
    assert proc.wait(timeout=30) == 0
    assert out.read_text() == "plain\n"


def test_a_parked_program_spins_in_place_until_unparked_then_runs_as_native(
        build, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = start_at_exec(build("rel_plain_exit"), out)
    pid = proc.pid
    try:
        at = pt.peekuser(pid, pt.RIP)
        code = code_at(pid, at)
        hold.park(pid, at)
        assert hold.is_parked(pid) and code_at(pid, at) == b"\xeb\xfe"
        pt.ptrace(pt.PTRACE_DETACH, pid)   # let go, not stopped: it runs, in place
        time.sleep(0.3)
        assert proc.poll() is None and state(pid) == "R" and out.read_text() == ""
        seen: list[bytes] = []
        hold.unpark(pid, while_held=lambda: seen.append(code_at(pid, at)))
        assert seen == [code]              # held there, its code back, before it ran on
        assert not hold.is_parked(pid)
    finally:
        if proc.poll() is None and hold.is_parked(pid):
            proc.kill()
    finish(proc, out)


def test_unpark_says_so_when_the_program_is_elsewhere_and_still_gives_the_code_back(
        build, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = start_at_exec(build("rel_plain_exit"), out)
    pid = proc.pid
    entry = entry_point(pid)   # the program's _start: ld.so runs first, it is not there
    hold.park(pid, entry)
    pt.ptrace(pt.PTRACE_DETACH, pid, 0, signal.SIGSTOP)   # stops in ld.so
    called: list[bool] = []
    with pytest.raises(hold.UnparkError, match="not at"):
        hold.unpark(pid, while_held=lambda: called.append(True))
    assert called == [] and not hold.is_parked(pid)
    os.kill(pid, signal.SIGCONT)   # (unpark may have let it go already: a zombie's fine)
    finish(proc, out)              # it ran through _start: the code there was put back


def test_letting_a_parked_stopped_program_go_gives_its_code_back_first(
        build, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = start_at_exec(build("rel_plain_exit"), out)
    pid = proc.pid
    at = pt.peekuser(pid, pt.RIP)
    hold.park(pid, at)
    pt.ptrace(pt.PTRACE_DETACH, pid, 0, signal.SIGSTOP)
    for _ in range(200):
        if state(pid) == "T":
            break
        time.sleep(0.005)
    continue_if_stopped(pid)               # what every giving-up path calls
    assert not hold.is_parked(pid)
    finish(proc, out)
