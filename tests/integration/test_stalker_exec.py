"""Under stalker, exec is followed: the same process, the new image recorded from its
entry point, in the same thread buffer, with a note in the trace (issue 12, item 2).

exec_first.c makes 7 calls to first_step and execs its argv[1:]; exec_second.c makes 11
calls to second_step (and crashes in second_crash with the argument "crash"). A failed
exec (ENOENT) must leave the trace alone: exec_first then makes 5 calls to after_failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import cli

from branchtrace.backends import Target
from branchtrace.backends.stalker import StalkerBackend
from branchtrace.model import BranchKind
from branchtrace.recorder import RecordConfig, record
from branchtrace.trace import Trace

if not StalkerBackend().probe().available:
    pytest.skip(f"stalker cannot run here: {StalkerBackend().probe().reason}",
                allow_module_level=True)

FIRST_CALLS, SECOND_CALLS, FAILED_CALLS = 7, 11, 5


def calls_to(trace: Trace, function: str) -> int:
    """Calls that land on the first instruction of ``function``."""
    b = trace.branches(trace.pid)
    to = trace.symbolizer.resolve(b["to_ip"])
    names = np.array(to.function_names + ("",))[to.function]
    return int(((b["kind"] == BranchKind.CALL) & (names == function) & (to.offset == 0)).sum())


def call_positions(trace: Trace, function: str) -> np.ndarray:
    b = trace.branches(trace.pid)
    to = trace.symbolizer.resolve(b["to_ip"])
    names = np.array(to.function_names + ("",))[to.function]
    return np.flatnonzero((b["kind"] == BranchKind.CALL) & (names == function))


def exec_notes(trace: Trace) -> list[str]:
    return [n for n in trace.notes if n.startswith("exec: ")]


@pytest.fixture(scope="module")
def programs(build) -> tuple[Path, Path]:
    return build("exec_first"), build("exec_second")


@pytest.mark.parametrize("mode", ["ring", "stream"])
def test_both_images_are_recorded_exactly(programs, mode):
    first, second = programs
    trace = record(Target(argv=(str(first), str(second))),
                   RecordConfig(backend="stalker", mode=mode))
    assert trace.exit.status == "exited" and trace.exit.code == 0, trace.exit
    assert list(trace.threads) == [trace.pid]
    assert calls_to(trace, "first_step") == FIRST_CALLS
    assert calls_to(trace, "second_step") == SECOND_CALLS, (trace.notes, trace.written)
    assert calls_to(trace, "after_failure") == 0
    # one thread, one sequence: the old image's branches, then the new one's
    assert call_positions(trace, "first_step").max() < call_positions(trace, "second_step").min()
    assert exec_notes(trace) == [
        f"exec: {os.path.realpath(second)} (pid {trace.pid}): the trace goes on in the new "
        "image; branches before it belong to the old one"]
    names = {m.name for m in trace.modules}
    assert {first.name, second.name} <= names
    if mode == "stream":
        assert trace.lost == {trace.pid: 0} and trace.gaps == []


def test_ptrace_sees_the_same_calls(programs):
    """The oracle on the same tiny programs: the same calls in both images."""
    first, second = programs
    got = {}
    for backend in ("stalker", "ptrace"):
        trace = record(Target(argv=(str(first), str(second))), RecordConfig(backend=backend))
        assert trace.exit.code == 0
        got[backend] = [calls_to(trace, f) for f in ("first_step", "second_step",
                                                     "after_failure")]
        assert any("exec" in n for n in trace.notes), trace.notes
    assert got["stalker"] == got["ptrace"] == [FIRST_CALLS, SECOND_CALLS, 0]


def _fault_line(stderr: str) -> str:
    """The "faulted at" line without its address (ASLR)."""
    line = next(l for l in stderr.splitlines() if "faulted at:" in l)
    return re.sub(r"faulted at:\s+0x[0-9a-f]+ ", "faulted at: ", line).strip()


@pytest.mark.parametrize("mode", ["ring", "stream"])
def test_a_crash_in_the_new_image_is_reported_there(programs, mode):
    first, second = programs
    direct = cli("run", "--backend", "stalker", "--mode", mode, "--", str(second), "crash")
    via = cli("run", "--backend", "stalker", "--mode", mode, "--", str(first), str(second),
              "crash")
    assert direct.returncode == via.returncode == 128 + 11, via.stderr
    assert _fault_line(via.stderr) == _fault_line(direct.stderr)
    assert "second_crash+0xc (exec_second) exec_second.c:13" in _fault_line(via.stderr)
    assert "fault address: 0x0" in via.stderr
    assert "note: exec: " in via.stderr
    assert via.stdout == direct.stdout == "second: 22\n"


def test_sh_c_exec_crasher_is_reported_in_the_crasher(programs):
    """The case of the issue: the crash is in the program sh became, not in sh."""
    _, second = programs
    done = cli("run", "--backend", "stalker", "--", "sh", "-c", f"exec {second} crash")
    assert done.returncode == 139, done.stderr
    assert "second_crash+0xc (exec_second) exec_second.c:13" in _fault_line(done.stderr)


@pytest.mark.parametrize("mode", ["ring", "stream"])
def test_a_failed_exec_leaves_the_trace_alone(programs, tmp_path, mode):
    first, _ = programs
    trace = record(Target(argv=(str(first), str(tmp_path / "missing"))),
                   RecordConfig(backend="stalker", mode=mode))
    assert trace.exit.status == "exited" and trace.exit.code == 3, trace.exit
    assert calls_to(trace, "first_step") == FIRST_CALLS
    assert calls_to(trace, "after_failure") == FAILED_CALLS
    assert exec_notes(trace) == []
    assert call_positions(trace, "first_step").max() < call_positions(trace, "after_failure").min()
    if mode == "stream":
        assert trace.lost == {trace.pid: 0} and trace.gaps == []


def test_a_shell_shim_that_execs_is_followed(programs, tmp_path):
    _, second = programs
    shim = tmp_path / "shim"
    shim.write_text(f'#!/bin/sh\nexec {second} "$@"\n')
    shim.chmod(0o755)
    trace = record(Target(argv=(str(shim),)), RecordConfig(backend="stalker", mode="stream"))
    assert trace.exit.code == 0
    assert calls_to(trace, "second_step") == SECOND_CALLS
    assert exec_notes(trace) and exec_notes(trace)[0].startswith(
        f"exec: {os.path.realpath(second)} ")
    assert trace.lost == {trace.pid: 0}
    # the shell's own branches are there too, before the exec
    names = {m.name for m in trace.modules}
    assert os.path.basename(os.path.realpath(shutil.which("sh") or "/bin/sh")) in names


def test_attach_follows_an_exec(programs, tmp_path, monkeypatch):
    """Attached to a shell waiting on a fifo: once it execs, the new image is recorded
    and its exit status is reported."""
    from branchtrace.backends.stalker.host import Host

    _, second = programs
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    loaded = threading.Event()
    load_agent = Host._load_agent

    def load_and_say(self, *args, **kwargs):
        reply = load_agent(self, *args, **kwargs)
        loaded.set()          # the agent's init returned: its execve hook is in
        return reply

    monkeypatch.setattr(Host, "_load_agent", load_and_say)
    proc = subprocess.Popen(["sh", "-c", f'read x < "{fifo}"; exec {second}'],
                            stdout=subprocess.PIPE, text=True)
    got: dict[str, Trace] = {}
    errors: list[BaseException] = []

    def attach() -> None:
        try:
            got["trace"] = record(Target(pid=proc.pid), RecordConfig(backend="stalker"))
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)
        finally:
            loaded.set()

    thread = threading.Thread(target=attach)
    thread.start()
    try:
        loaded.wait(120)
        with open(fifo, "w") as f:   # the shell waits in open() until we are here
            f.write("x\n")
        out, _ = proc.communicate(timeout=60)
    finally:
        thread.join(60)
        if proc.poll() is None:
            proc.kill()
    assert not errors, errors
    trace = got["trace"]
    assert out == "second: 22\n" and proc.returncode == 0
    assert trace.exit.status == "exited" and trace.exit.code == 0, trace.exit
    assert calls_to(trace, "second_step") == SECOND_CALLS
    assert exec_notes(trace)


# -- real programs -------------------------------------------------------------------------

def _native(argv: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, **kwargs)


def test_sh_c_exec_sort_is_identical_and_recorded(tmp_path):
    data = tmp_path / "nums.txt"
    data.write_text("".join(f"{(i * 7919) % 2003}\n" for i in range(2000)))
    argv = ["sh", "-c", f"exec sort {data}"]
    native = _native(argv)
    out = tmp_path / "sort.btrace"
    traced = cli("run", "--backend", "stalker", "--mode", "stream", "-o", str(out), "--", *argv)
    assert (traced.returncode, traced.stdout) == (native.returncode, native.stdout)
    stats = cli("stats", str(out)).stdout
    assert "lost:      0" in stats
    assert "(sort)" in stats


def _python_shim(tmp_path: Path) -> str:
    """The pyenv shim when this machine has one, else a shell script that execs python3."""
    pyenv = Path.home() / ".pyenv" / "shims" / "python3"
    if pyenv.exists():
        return str(pyenv)
    real = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    shim = tmp_path / "python3"
    shim.write_text(f'#!/bin/bash\nexec {real} "$@"\n')
    shim.chmod(0o755)
    return str(shim)


def test_python_through_a_shim_records_python(tmp_path):
    shim = _python_shim(tmp_path)
    argv = [shim, "-c", "print(sum(range(10**5)))"]
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    native = _native(argv, env=env)
    assert native.returncode == 0, native.stderr
    out = tmp_path / "py.btrace"
    traced = cli("run", "--backend", "stalker", "--mode", "stream", "-o", str(out), "--",
                 *argv, env=env, timeout=300)
    assert (traced.returncode, traced.stdout) == (0, native.stdout) == (0, "4999950000\n")
    stats = cli("stats", str(out), timeout=300).stdout
    assert "lost:      0" in stats
    assert "builtin_sum" in stats and "_PyEval_EvalFrameDefault" in stats, stats
