"""Starting early: ``branchtrace run`` starts the program and Frida's attach before it
imports numpy and the store (they take about as long as the attach), and hands them to
``record``; a run that fails before recording kills that program, and a different
target cancels it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import cli

from branchtrace.backends import Choice, Target
from branchtrace.backends.stalker import StalkerBackend
from branchtrace.errors import MemoryLimitError
from branchtrace.recorder import RecordConfig, record

# skipped with the reason when the stalker backend cannot run here; failed under
# --require-backend stalker (tests/conftest.py)
pytestmark = pytest.mark.backend("stalker")


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def _gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _state(pid) in (None, "Z", "X"):
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def sleeper(tmp_path: Path) -> Path:
    prog = tmp_path / "early-sleep"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", prog)
    return prog


def test_the_cli_imports_no_numpy_before_it_starts_the_program() -> None:
    code = "import sys, branchtrace.cli; print(sorted(m for m in sys.modules if m.startswith(('numpy', 'frida'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_the_api_names_still_resolve() -> None:
    code = ("import branchtrace; print(branchtrace.record.__module__, branchtrace.Trace.__name__,"
            " 'RecordConfig' in dir(branchtrace)); branchtrace.nothing_such")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    assert proc.stdout.split() == ["branchtrace.recorder", "Trace", "True"]
    assert "AttributeError: module 'branchtrace' has no attribute 'nothing_such'" in proc.stderr


def test_a_run_that_fails_before_recording_kills_the_early_program(sleeper: Path) -> None:
    backend = StalkerBackend()
    target = Target(argv=(str(sleeper), "30"))
    backend.start_early(target)
    assert backend._early is not None
    pid = backend._early[1].pid
    assert _state(pid) in ("t", "T")      # held at its entry point
    with pytest.raises(MemoryLimitError):
        record(target, RecordConfig(backend="stalker", buffer="1M", memory_limit="64K"),
               chosen=Choice(backend, ("test",)))
    assert _gone(pid), f"pid {pid} still there: {_state(pid)}"
    assert backend._early is None


def _killed(pid: int) -> bool:
    """Dead, or SIGKILL already pending (it is on its way out)."""
    if _state(pid) in (None, "Z", "X"):
        return True
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
        return True
    return any(int(fields.get(key, "0").strip(), 16) & (1 << 8) for key in ("SigPnd", "ShdPnd"))


def test_cancel_kills_the_early_program_before_it_returns(sleeper: Path) -> None:
    """Not later, by the reaper: Frida holds the program once it has attached, and lets
    it go when its session detaches or our process exits, which can come first (CI saw
    a cancelled ``sh -c 'touch ...'`` do its touch)."""
    backend = StalkerBackend()
    backend.start_early(Target(argv=(str(sleeper), "30")))
    assert backend._early is not None
    pid = backend._early[1].pid
    backend._early[2]._thread.join()    # Frida holds it now
    assert backend._early[2]._session is not None
    reaper = backend._early[1]._reaper
    assert reaper is not None
    os.kill(reaper.pid, signal.SIGSTOP)   # the reaper is slow to read, this time
    launcher = backend._early[1]
    try:
        backend.cancel_early()
        assert _killed(pid), f"pid {pid} still alive after cancel_early: {_state(pid)}"
    finally:
        os.kill(reaper.pid, signal.SIGCONT)
    assert _gone(pid)
    # reaped, and the reaper gone: Frida's ptrace no longer holds the dead program
    assert launcher.ended.wait(10), f"pid {pid} never reaped: {_state(pid)}"
    assert launcher.exit is not None and launcher.exit.signal == signal.SIGKILL
    assert reaper.wait(timeout=10) == 0 and _state(pid) is None


def test_another_target_cancels_the_early_one_and_is_recorded(sleeper: Path, build) -> None:
    exe = build("loop")
    backend = StalkerBackend()
    backend.start_early(Target(argv=(str(sleeper), "30")))
    assert backend._early is not None
    pid = backend._early[1].pid
    trace = record(Target(argv=(str(exe), "100")), RecordConfig(backend="stalker"),
                   chosen=Choice(backend, ("test",)))
    assert _gone(pid)
    assert trace.exit.status == "exited" and trace.exit.code == 0
    assert trace.pid != pid and len(trace.branches(trace.pid)) > 100


def test_run_records_through_the_early_start(build) -> None:
    exe = build("loop")
    proc = cli("run", "--backend", "stalker", "--report", "always", "--last", "4", "--",
               str(exe), "100")
    assert proc.returncode == 0, proc.stderr
    assert "exited with status 0" in proc.stderr
    assert "branches recorded [stalker, ring mode]" in proc.stderr


def test_a_missing_program_fails_before_anything_starts(tmp_path: Path) -> None:
    proc = cli("run", "--backend", "stalker", "--", str(tmp_path / "no-such-program"))
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        f"branchtrace: error: program not found: {tmp_path / 'no-such-program'}"]
    assert os.listdir(tmp_path) == []
