"""Under stalker, every process the target starts is followed (issue 12, item 3): fork
children from fork's return, vfork/posix_spawn children from their exec, each into new
slots of the same store, each with its own ProcessInfo in ``RunResult.processes``.

stalker_fork_n.c forks N children; child k calls work() exactly k + 1 times and exits
with k; the parent calls work() once after each wait. With "spawn PROGRAM" it starts
each child with posix_spawn instead: stalker_spawned.c calls spawned_work() k + 1 times
and exits with k.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import cli

from branchtrace.backends import RunResult, Target
from branchtrace.backends.stalker import StalkerBackend
from branchtrace.model import BranchKind, ProcessInfo
from branchtrace.recorder import RecordConfig, record
from branchtrace.symbols import Symbolizer
from branchtrace.trace import Trace

if not StalkerBackend().probe().available:
    pytest.skip(f"stalker cannot run here: {StalkerBackend().probe().reason}",
                allow_module_level=True)

N = 3


@pytest.fixture(scope="module")
def programs(build) -> tuple[Path, Path]:
    return build("stalker_fork_n"), build("stalker_spawned")


@pytest.fixture
def results(monkeypatch) -> list[RunResult]:
    """The backend's RunResults of the runs in the test (the recorder keeps none)."""
    seen: list[RunResult] = []
    original = StalkerBackend.record

    def keep(self: StalkerBackend, *args: Any) -> RunResult:
        result = original(self, *args)
        seen.append(result)
        return result

    monkeypatch.setattr(StalkerBackend, "record", keep)
    return seen


def calls_to(trace: Trace, process: ProcessInfo, function: str) -> int:
    """Calls that land on ``function`` in every thread of ``process``, symbolized with
    the process's own modules."""
    symbolizer = Symbolizer(process.modules, lines=False)
    total = 0
    for tid in process.threads:
        b = trace.branches(tid)
        to = symbolizer.resolve(b["to_ip"])
        names = np.array(to.function_names + ("",))[to.function]
        total += int(((b["kind"] == BranchKind.CALL) & (names == function)
                      & (to.offset == 0)).sum())
    return total


def native(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("mode", ["ring", "stream"])
def test_fork_children_are_recorded_exactly(programs, results, mode):
    fork_n, _ = programs
    trace = record(Target(argv=(str(fork_n), str(N))), RecordConfig(backend="stalker",
                                                                     mode=mode))
    (result,) = results
    assert trace.exit.status == "exited" and trace.exit.code == 0, trace.exit
    first, *children = result.processes
    assert first.pid == trace.pid and first.ppid == 0 and first.exit == trace.exit
    assert [c.ppid for c in children] == [trace.pid] * N
    assert [c.exit.status for c in children] == ["exited"] * N, trace.notes
    assert [c.exit.code for c in children] == list(range(N))
    assert [c.argv for c in children] == [first.argv] * N
    assert sorted(result.threads) == sorted(t for p in result.processes for t in p.threads)
    assert set(trace.threads) == set(result.threads)
    assert calls_to(trace, first, "work") == N
    assert [calls_to(trace, c, "work") for c in children] == [k + 1 for k in range(N)]
    assert all(c.start_ns <= c.end_ns for c in children)
    if mode == "stream":
        assert all(lost == 0 for lost in trace.lost.values()) and trace.gaps == []


@pytest.mark.parametrize("mode", ["ring", "stream"])
def test_posix_spawn_children_are_followed_from_their_exec(programs, results, mode):
    fork_n, spawned = programs
    argv = (str(fork_n), "2", "spawn", str(spawned))
    trace = record(Target(argv=argv), RecordConfig(backend="stalker", mode=mode))
    (result,) = results
    assert trace.exit.status == "exited" and trace.exit.code == 0, trace.exit
    first, *children = result.processes
    assert [c.argv for c in children] == [(str(spawned), "0"), (str(spawned), "1")]
    assert [(c.exit.status, c.exit.code) for c in children] == [("exited", 0), ("exited", 1)]
    assert [calls_to(trace, c, "spawned_work") for c in children] == [1, 2]
    assert all(any(m.path == str(spawned) for m in c.modules) for c in children)
    if mode == "stream":
        assert all(lost == 0 for lost in trace.lost.values()) and trace.gaps == []


def test_sh_pipeline_output_and_every_process(programs, results):
    fork_n, _ = programs
    argv = ["sh", "-c", f"{fork_n} 2 | cat; exit 3"]
    expected = native(argv)
    run = cli("run", "--backend", "stalker", "--", *argv)
    assert run.stdout == expected.stdout == "child 0: 0\nchild 1: 1\n"
    assert run.returncode == expected.returncode == 3
    trace = record(Target(argv=tuple(argv)), RecordConfig(backend="stalker", mode="stream"))
    (result,) = results
    first = result.processes[0]
    assert first.argv == tuple(argv) and (first.exit.status, first.exit.code) == ("exited", 3)
    children = {p.argv: p for p in result.processes if p.ppid == first.pid}
    # argv after each child's exec
    assert set(children) == {(str(fork_n), "2"), ("cat",)}, [p.argv for p in result.processes]
    assert all((p.exit.status, p.exit.code) == ("exited", 0) for p in children.values())
    grandchildren = [p for p in result.processes if p.ppid == children[(str(fork_n), "2")].pid]
    assert len(result.processes) == 5
    assert [calls_to(trace, p, "work") for p in grandchildren] == [1, 2]
    assert all(trace.written[t] > 0 for p in result.processes for t in p.threads)
    assert all(lost == 0 for lost in trace.lost.values())


def test_not_following_children_leaves_them_untraced(programs, monkeypatch):
    fork_n, _ = programs
    original = StalkerBackend.record

    def without(self: StalkerBackend, target: Target, store: Any, options: Any) -> RunResult:
        return original(self, target, store, dataclasses.replace(options,
                                                                 follow_children=False))

    monkeypatch.setattr(StalkerBackend, "record", without)
    trace = record(Target(argv=(str(fork_n), str(N))), RecordConfig(backend="stalker"))
    assert trace.exit.status == "exited" and trace.exit.code == 0
    assert list(trace.threads) == [trace.pid]
    assert f"{N} child processes ran untraced (--no-follow-children)" in trace.notes


def test_a_crashing_child_has_its_crash_facts(programs, results):
    fork_n, _ = programs
    trace = record(Target(argv=(str(fork_n), "2", "crash")), RecordConfig(backend="stalker"))
    (result,) = results
    assert trace.exit.status == "exited" and trace.exit.code == 0
    first, ok, crashed = result.processes
    assert (ok.exit.status, ok.exit.code) == ("exited", 0)
    assert crashed.exit.status == "signaled" and crashed.exit.signal == 11, trace.notes
    assert crashed.exit.fault_address == 0 and crashed.exit.tid == crashed.pid
    where = Symbolizer(crashed.modules, lines=False).resolve(
        np.array([crashed.exit.fault_pc], dtype=np.uint64))
    assert where.function_names[where.function[0]] == "child_crash"
    assert calls_to(trace, crashed, "work") == 2


def test_restore_code_puts_the_files_bytes_back():
    """What a fork child gets of the old agent's hooks is undone from the files."""
    from branchtrace.backends.stalker.children import restore_code

    child = subprocess.Popen(["sleep", "30"])
    try:
        for _ in range(500):   # until sleep's libc is mapped (Popen returns before)
            with open(f"/proc/{child.pid}/maps", encoding="utf-8") as f:
                lines = [x for x in f if "r-xp" in x and "/libc" in x]
            if lines and os.readlink(f"/proc/{child.pid}/exe").endswith("/sleep"):
                break
            time.sleep(0.01)
        line = lines[0]
        start = int(line.split("-")[0], 16) + 0x100
        with open(f"/proc/{child.pid}/mem", "r+b", buffering=0) as mem:
            mem.seek(start)
            before = mem.read(16)
            mem.seek(start)
            mem.write(b"\xe9\x00\x00\x00\x00" + before[5:])   # a hook's jump
            assert restore_code(child.pid) == 4096
            mem.seek(start)
            assert mem.read(16) == before
        assert restore_code(child.pid) == 0
    finally:
        child.kill()
        child.wait()


def test_a_child_not_followed_runs_none_of_the_hooks(build):
    """A forked child the backend does not follow finds the functions the parent's hooks
    patched as the library has them (agent/forkchild.c): a hook left in a child ran
    Frida's code there, which could wait for ever on a lock one of Frida's threads held
    at the fork (the child hung, and its parent in waitpid). (A followed child has hooks
    again: those of the agent that traces it.)"""
    exe = build("proc_fork_peek")
    native = subprocess.run([str(exe)], capture_output=True, timeout=60)
    assert native.returncode == 0 and native.stdout.endswith(b"child ok\n")
    done = cli("run", "--report", "never", "--no-follow-children", "--", str(exe), timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.encode() == native.stdout
