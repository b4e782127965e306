"""Hard targets, traced with each backend: their output is unchanged and each thread's
trace is complete (stream mode: nothing lost). Fork and exec, 200 short threads, SIGALRM
every millisecond, setjmp/longjmp, exit from a worker thread, 50 attach/detach cycles."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from branchtrace.backends import Target, probe_all
from branchtrace.model import BranchKind
from branchtrace.recorder import RecordConfig, record

BACKENDS = [name for name, probe in probe_all() if probe.available]


def native(exe, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(exe), *args], capture_output=True, timeout=60)


def traced(exe, backend: str, *args: str):
    """Record in stream mode, the program's stdout captured through a pipe."""
    import os
    import tempfile

    with tempfile.TemporaryFile() as out:
        saved = os.dup(1)
        os.dup2(out.fileno(), 1)
        try:
            trace = record(Target(argv=(str(exe), *args)), RecordConfig(backend=backend, mode="stream"))
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        out.seek(0)
        return trace, out.read()


def assert_complete(trace) -> None:
    assert trace.gaps == []
    for tid, branches in trace.threads.items():
        assert trace.lost.get(tid, 0) == 0
        assert trace.written[tid] > 0 and len(branches) > 0, f"thread {tid}"
        if trace.backend == "ptrace":  # one record per branch (stalker: one per block)
            assert trace.written[tid] == len(branches), f"thread {tid}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_fork_and_exec(build, backend):
    exe = build("rel_fork")
    trace, out = traced(exe, backend)
    assert out == native(exe).stdout == b"child ran\nparent saw 0\n"
    assert trace.exit.code == 0 and list(trace.threads) == [trace.pid]
    assert_complete(trace)


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_hundred_short_threads(build, backend):
    exe = build("rel_many_threads")
    trace, out = traced(exe, backend)
    assert out == native(exe).stdout == b"total 19900\n"
    assert len(trace.threads) == 201
    assert_complete(trace)
    for tid, branches in trace.threads.items():
        if tid == trace.pid:
            continue
        names = trace.symbolizer.resolve(branches["to_ip"])
        called = np.array(names.function_names + ("",))[names.function]
        # start_thread calls the thread function through a pointer
        calls = called[branches["kind"] == BranchKind.INDIRECT_CALL]
        assert "add" in set(calls), f"thread {tid} never ran add"


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigalrm_every_millisecond(build, backend):
    exe = build("rel_alarm")
    trace, out = traced(exe, backend)
    assert out == native(exe).stdout == b"ticks done\n"
    assert_complete(trace)
    b = trace.branches(trace.pid)
    interrupts = b[b["kind"] == BranchKind.INTERRUPT]
    handlers = {trace.symbolizer.describe(int(t)).function for t in interrupts["to_ip"]}
    assert handlers == {"on_alarm"} and len(interrupts) >= 20
    src = trace.symbolizer.resolve(b["from_ip"])
    fn = np.array(src.function_names + ("",))[src.function]
    returns = int(((fn == "on_alarm") & (b["kind"] == BranchKind.RETURN)).sum())
    assert returns == len(interrupts)  # every handler run returned


@pytest.mark.parametrize("backend", BACKENDS)
def test_exit_from_another_thread(build, backend):
    exe = build("rel_thread_exit")
    trace, out = traced(exe, backend)
    assert out == native(exe).stdout == b"worker exits the process\n"
    assert trace.exit.status == "exited" and trace.exit.code == 3
    assert len(trace.threads) == 2
    assert_complete(trace)


@pytest.mark.parametrize("backend", BACKENDS)
def test_setjmp_and_longjmp(build, backend):
    exe = build("rel_longjmp")
    trace, out = traced(exe, backend)
    assert out == native(exe).stdout == b"longjmp total 23\n"
    assert trace.exit.code == 0
    assert_complete(trace)
    b = trace.branches(trace.pid)
    calls = b[b["kind"] == BranchKind.CALL]
    names = trace.symbolizer.resolve(calls["to_ip"])
    called = np.array(names.function_names + ("",))[names.function]
    assert int((called == "inner").sum()) == 23   # 1+2+3+4+1+2+3+4+1+2 calls, none lost


FRIDA_REATTACH = pytest.mark.xfail(
    reason="Frida 17.26 on this kernel: 50 plain frida.attach/detach cycles, with no script, "
           "kill the target (SIGTRAP or a jump to 0x320); one cycle survives", strict=False)


@pytest.mark.parametrize("backend", [pytest.param(b, marks=FRIDA_REATTACH) if b == "stalker" else b
                                     for b in BACKENDS])
def test_attach_and_detach_fifty_times(build, backend):
    exe = build("rel_counter")
    lines = 150
    expected = native(exe, str(lines)).stdout
    program = subprocess.Popen([str(exe), str(lines)], stdout=subprocess.PIPE)
    try:
        for _ in range(50):
            trace = record(Target(pid=program.pid), RecordConfig(backend=backend, duration=0.02))
            assert trace.exit.status == "detached"
            assert program.poll() is None, "the program died while we attached and detached"
        out, _ = program.communicate(timeout=120)
    finally:
        if program.poll() is None:
            program.kill()
    assert program.returncode == 0
    assert out == expected
