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
from test_stalker import expected_work, kinds_inside

import branchtrace
from branchtrace.backends import Choice, Target
from branchtrace.backends.stalker import StalkerBackend
from branchtrace.cli import main as cli_main
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


def test_the_attach_starts_without_numpy() -> None:
    # issue 15: Attaching reads the program's maps before the attach starts; the symbols
    # package (numpy, ELF, DWARF) is not needed for that, and its names still resolve
    code = ("import sys, os; from branchtrace.backends.stalker.launch import mapped_paths; "
            "paths = mapped_paths(os.getpid()); "
            "print(sorted(m for m in sys.modules if m.startswith('numpy')), sys.executable in "
            "{os.path.realpath(p) for p in paths} or os.path.realpath(sys.executable) in paths); "
            "from branchtrace.symbols import Symbolizer, read_maps, LineTable; "
            "import branchtrace.symbols as s; print(Symbolizer.__module__, s.read_maps.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split("\n")
    assert out[0] == "[] True"
    assert out[1] == "branchtrace.symbols.resolver branchtrace.symbols.maps"


def test_the_mapped_paths_are_the_module_paths() -> None:
    from branchtrace.backends.stalker.launch import mapped_paths
    from branchtrace.symbols.maps import modules_from_maps, read_maps

    pid = os.getpid()
    assert mapped_paths(pid) == {m.path for m in modules_from_maps(read_maps(pid))}
    assert mapped_paths(1 << 30) is None


def test_the_fill_offset_is_kept_and_used(tmp_path: Path, build) -> None:
    # agent/fill.js and capcache.js: the first run finds Frida's byte-at-a-time memset and
    # capstone's table builder, and the tracer keeps their offsets; the next run is given
    # them, and the trace is the same, as it is with neither patched (the third run)
    prog = build("loop")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    cache = tmp_path / "cache" / "branchtrace" / "stalker-fill.json"
    traces = []
    for run in range(3):
        out = subprocess.run([sys.executable, "-m", "branchtrace", "run", "--backend",
                              "stalker", "--report", "never", "-o", str(tmp_path / "t.btrace"),
                              "--mode", "stream", "--disable-randomization", "--", str(prog),
                              "1000"],
                             env={**env, "BRANCHTRACE_STALKER_FASTFILL": "01"[run < 2]},
                             capture_output=True, text=True, check=False)
        assert out.returncode == 0, out.stderr
        traces.append(branchtrace.open(tmp_path / "t.btrace").branches())
        if not cache.exists():
            pytest.skip("this Frida build has neither patch's code (nothing patched)")
    import json

    kept = json.loads(cache.read_text())
    if not isinstance(kept["capstone"], int):
        pytest.skip("this Frida build has not the capstone table builder capcache.js knows")
    assert isinstance(kept["offset"], int)
    assert len(traces[0]) > 1000
    assert (traces[0] == traces[1]).all() and (traces[0] == traces[2]).all()


def test_the_api_names_still_resolve() -> None:
    code = ("import branchtrace; print(branchtrace.record.__module__, branchtrace.Trace.__name__,"
            " 'RecordConfig' in dir(branchtrace)); branchtrace.nothing_such")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    # the API's record() (reader.py) returns a file's reader; recorder.record is the engine
    assert proc.stdout.split() == ["branchtrace.reader", "Trace", "True"]
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
    assert trace.pid != pid and list(trace.threads) == [trace.pid]
    assert kinds_inside(trace.branches(trace.pid), trace.symbolizer, "work") == expected_work(100)


class EarlySpy:
    """Records what StalkerBackend.start_early started and what record() took over."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.started: list[tuple[Target, int]] = []     # (target, pid) per start_early
        self.taken: list[int | None] = []               # per record(): the early pid, or None
        start_early, take_early = StalkerBackend.start_early, StalkerBackend._take_early

        def spy_start(backend: StalkerBackend, target: Target) -> None:
            start_early(backend, target)
            assert backend._early is not None
            self.started.append((target, backend._early[1].pid))

        def spy_take(backend: StalkerBackend, target: Target | None):  # type: ignore[no-untyped-def]
            got = take_early(backend, target)
            if target is not None:
                self.taken.append(got[0].pid if got is not None else None)
            return got

        monkeypatch.setattr(StalkerBackend, "start_early", spy_start)
        monkeypatch.setattr(StalkerBackend, "_take_early", spy_take)


@pytest.mark.parametrize("mode", ["ring", "stream"])
def test_record_takes_over_the_early_program(build, monkeypatch, mode) -> None:
    """The API: start_early, then record() of the same target records that very process
    (its pid), from its first branches in main on: work's exact counts."""
    exe, n = build("loop"), 333
    spy = EarlySpy(monkeypatch)
    backend = StalkerBackend()
    target = Target(argv=(str(exe), str(n)))
    backend.start_early(target)
    [(_, pid)] = spy.started
    trace = record(target, RecordConfig(backend="stalker", mode=mode),
                   chosen=Choice(backend, ("test",)))
    assert spy.taken == [pid] and backend._early is None
    assert trace.pid == pid and list(trace.threads) == [pid]
    assert trace.exit.status == "exited" and trace.exit.code == 0
    assert kinds_inside(trace.branches(pid), trace.symbolizer, "work") == expected_work(n)
    assert trace.lost == {pid: 0} and trace.gaps == []


def test_run_records_through_the_early_start(build, monkeypatch, tmp_path, capfd) -> None:
    """``branchtrace run`` (its main(), in this process, to watch it) starts the program
    early, and the trace it writes is of that process: work's exact counts."""
    exe, n = build("loop"), 100
    out = tmp_path / "loop.btrace"
    spy = EarlySpy(monkeypatch)
    code = cli_main(["run", "--backend", "stalker", "--report", "never", "-o", str(out), "--",
                     str(exe), str(n)])
    assert code == 0, capfd.readouterr().err
    [(target, pid)] = spy.started
    assert target.argv == (str(exe), str(n)) and spy.taken == [pid]
    trace = branchtrace.open(out)
    assert (trace.backend, trace.pid, list(trace.threads)) == ("stalker", pid, [pid])
    assert trace.exit.status == "exited" and trace.exit.code == 0
    assert kinds_inside(trace.branches(pid), trace.symbolizer, "work") == expected_work(n)


def test_run_through_python_m_says_what_it_recorded(build) -> None:
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
