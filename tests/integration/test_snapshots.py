"""Snapshots on demand (issue 14, section 3): a ring-mode run writes a report of every
thread (and with -o a trace file) at a trigger's call, on SIGUSR2, or on `branchtrace
snapshot PID`, and the program goes on with its exit status unchanged. Both backends,
on tests/fixtures/trigger.c (main -> a -> b -> target, called N times)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ALL_BACKENDS, cli

import branchtrace
from branchtrace.model import BranchKind


def _calls_into(trace: branchtrace.Trace, name: str) -> int:
    """How many calls into function ``name`` the first thread of ``trace`` holds."""
    address = trace.symbolizer.symbol_address(None, name)
    branches = trace.branches(trace.pid)
    return int(((branches["to_ip"] == address) & (branches["kind"] == BranchKind.CALL)).sum())


def _programs(exe: str) -> list[int]:
    """The processes running ``exe``."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.readlink(f"/proc/{name}/exe") == exe:
                    found.append(int(name))
            except OSError:
                pass
    return found


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_a_trigger_snapshot_shows_the_callers_chain(build, backend):
    exe = build("trigger")
    r = cli("run", "--backend", backend, "--trigger", "target:2", "--format", "json",
            "--report-to", "-", "--", str(exe), "4")
    assert r.returncode == 3, r.stderr             # the program's own status
    doc = json.loads(r.stdout)                     # one snapshot; no crash report
    assert doc["snapshot"]["number"] == 1
    assert doc["snapshot"]["reason"] == "trigger target, call 2"
    first = doc["threads"][0]
    assert first["exit"]["status"] == "snapshot" and first["thread"] == doc["snapshot"]["thread"]
    assert first["exit"]["fault_pc"]["function"] == "target"
    assert [f["function"] for f in first["stack"]][:4] == ["target", "b", "a", "main"]
    assert [f["function"] for f in first["replayed_stack"]][:4] == ["target", "b", "a", "main"]
    assert first["stack_disagreements"] == []
    assert first["branches"][-1]["to"]["function"] == "target"
    assert first["branches"][-1]["kind"] == "call"


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_trigger_n_and_every_write_trace_files_of_that_moment(build, backend, tmp_path):
    exe = build("trigger")
    out = tmp_path / "t.btrace"
    r = cli("run", "--backend", backend, "--trigger", "target:3", "-o", str(out), "--",
            str(exe), "5")
    assert r.returncode == 3, r.stderr
    assert "branchtrace: snapshot 1 of" in r.stderr and "trigger target, call 3" in r.stderr
    assert f"trace file: {tmp_path / 't.snapshot-1.btrace'}" in r.stderr
    snap = branchtrace.open(tmp_path / "t.snapshot-1.btrace")
    assert snap.exit.status == "snapshot" and snap.exit.stack is not None
    assert _calls_into(snap, "target") == 3        # the third call, not the first
    whole = branchtrace.open(out)                  # the run's own file: all five
    assert whole.exit.status == "exited" and _calls_into(whole, "target") == 5

    r = cli("run", "--backend", backend, "--trigger", "target:2", "--trigger-every",
            "--snapshots", "2", "-o", str(out), "--report", "never", "--", str(exe), "5")
    assert r.returncode == 3, r.stderr
    names = sorted(p.name for p in tmp_path.glob("t.snapshot-*.btrace"))
    assert names == ["t.snapshot-1.btrace", "t.snapshot-2.btrace"]   # calls 2 and 3 only
    for k, calls in ((1, 2), (2, 3)):
        assert _calls_into(branchtrace.open(tmp_path / f"t.snapshot-{k}.btrace"),
                           "target") == calls


@pytest.mark.parametrize("how", ["kill", "command"])
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_a_snapshot_of_a_sleeping_program(build, backend, how, tmp_path):
    exe = build("trigger")
    report = tmp_path / "report.txt"
    proc = subprocess.Popen([sys.executable, "-m", "branchtrace", "run", "--backend", backend,
                             "--report-to", str(report), "--", str(exe), "2", "sleep"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "sleeping\n"    # the program is in its sleep
        time.sleep(0.5)    # (or still stepping out of its write, under ptrace)
        if how == "kill":
            os.kill(proc.pid, signal.SIGUSR2)
        else:
            (program,) = _programs(str(exe))
            r = cli("snapshot", str(program))
            assert r.returncode == 0, r.stderr
            assert f"asked branchtrace pid {proc.pid} (tracing pid {program})" in r.stderr
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 3, err                  # it went on and ended as it would
    text = report.read_text()
    assert "snapshot 1 of" in text and ": SIGUSR2; it went on" in text
    if backend == "ptrace":
        # the tracer stopped the thread (asleep in its system call) and copied its stack
        stack = text.split("Call stack (unwound from its stack")[1].split("note:")[0]
    else:
        # no thread is stopped: the stack replayed from the calls and returns
        stack = text.split("Call stack replayed")[1].split("note:")[0]
    assert "main+" in stack and "#1 " in stack   # main, and what it called
    assert any(name in stack for name in ("usleep", "nanosleep", "write"))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_an_unknown_trigger_is_one_line_and_leaves_no_program(build, backend):
    exe = build("trigger")
    r = cli("run", "--backend", backend, "--trigger", "no_such_function", "--", str(exe), "2")
    assert r.returncode == 125
    assert r.stderr.count("\n") == 1 and "--trigger: no function 'no_such_function'" in r.stderr
    for _ in range(50):          # the program is ended, not left stopped
        if not _programs(str(exe)):
            break
        time.sleep(0.1)
    assert _programs(str(exe)) == []


def test_snapshot_options_are_checked_first(build):
    exe = build("trigger")
    r = cli("run", "--mode", "stream", "--trigger", "target", "--", str(exe))
    assert r.returncode == 125 and "--trigger takes ring mode" in r.stderr
    r = cli("run", "--trigger-every", "--", str(exe))
    assert r.returncode == 125 and "go with --trigger SYMBOL" in r.stderr
    r = cli("snapshot", str(os.getpid()))
    assert r.returncode != 0 and "neither a branchtrace run or attach" in r.stderr


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_a_trigger_in_an_attached_program_which_goes_on(build, backend):
    exe = build("trigger")
    program = subprocess.Popen([str(exe), "1", "sleep"], stdout=subprocess.PIPE, text=True)
    try:
        assert program.stdout is not None and program.stdout.readline() == "sleeping\n"
        r = cli("attach", "--backend", backend, "--trigger", "usleep:5", "--duration", "1",
                "--format", "json", "--report-to", "-", str(program.pid))
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout.split("\n}\n")[0] + "\n}")     # the snapshot's, first
        assert doc["snapshot"]["reason"] == "trigger usleep, call 5"
        assert [f["function"] for f in doc["threads"][0]["stack"]][:2] == ["usleep", "main"]
        # after the snapshot and the detach, the program sleeps on and ends as it would
        # (with the stalker backend a probe detached under Stalker once killed it)
        assert program.wait(timeout=60) == 3
    finally:
        if program.poll() is None:
            program.kill()
            program.wait()


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_a_snapshot_reports_every_thread_the_triggers_first(build, backend):
    exe = build("threads")            # 4 threads calling work() 50..200 times
    r = cli("run", "--backend", backend, "--trigger", "work:120", "--format", "json",
            "--report-to", "-", "--", str(exe))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout[r.stdout.index("{"):r.stdout.rindex("}") + 1])   # and "done"
    threads = doc["threads"]
    assert len(threads) >= 2 and len({t["thread"] for t in threads}) == len(threads)
    first = threads[0]
    assert first["thread"] == doc["snapshot"]["thread"]
    assert [f["function"] for f in first["stack"]][:2] == ["work", "worker"]
    for other in threads[1:]:         # replayed only: no thread but the trigger's stopped
        assert other["stack"] == [] and "fault_pc" not in other["exit"]
    # (a thread just started may have recorded nothing yet: main has)
    assert any(other["replayed_stack"] for other in threads[1:])


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_a_trigger_is_the_first_images_only(build, backend):
    # 7 calls of first_step, an exec of itself (no address randomization: its
    # first_step is where the first image's was), 7 more: only the first image's count
    exe = build("exec_first")
    r = cli("run", "--backend", backend, "--disable-randomization", "--trigger", "first_step",
            "--trigger-every", "--", str(exe), str(exe))
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("branchtrace: snapshot ") == 7
    assert "trigger first_step, call 7" in r.stderr
